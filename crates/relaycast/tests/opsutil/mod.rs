//! Helpers shared by the operations tests (ops.rs, shutdown.rs, faults.rs,
//! hostile.rs) and the benches that run the real binary.
#![allow(dead_code)]

/// Walk top-level MP4 boxes: `Some(types)` when `data` is a whole number of
/// boxes, `None` when it ends inside one.
pub fn whole_boxes(data: &[u8]) -> Option<Vec<[u8; 4]>> {
    let mut off = 0usize;
    let mut types = Vec::new();
    while off < data.len() {
        if data.len() - off < 8 {
            return None;
        }
        let mut size = u32::from_be_bytes(data[off..off + 4].try_into().ok()?) as u64;
        let typ: [u8; 4] = data[off + 4..off + 8].try_into().ok()?;
        if size == 1 {
            if data.len() - off < 16 {
                return None;
            }
            size = u64::from_be_bytes(data[off + 8..off + 16].try_into().ok()?);
        }
        if size < 8 || off as u64 + size > data.len() as u64 {
            return None;
        }
        off += size as usize;
        types.push(typ);
    }
    Some(types)
}

/// RSS of a process in bytes (Linux /proc).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The `host:port` a spawned `relaycast serve` prints ("relaycast: listening
/// on http://…/"), read from its piped stdout, which then keeps being
/// drained so the relay never blocks on it.
pub fn listening(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let Some(out) = child.stdout.take() else {
        panic!("the relay's stdout is not piped");
    };
    let mut r = std::io::BufReader::new(out);
    let mut line = String::new();
    while !line.starts_with("relaycast: listening") {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("the relay exited before listening");
        }
    }
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    line.trim()
        .strip_prefix("relaycast: listening on http://")
        .map(|a| a.trim_end_matches('/').to_string())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
}

//! Helpers shared by the operations tests (ops.rs, shutdown.rs, faults.rs).
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

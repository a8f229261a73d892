//! `auth`: who may publish and who may watch.
//!
//! - **Publish keys** ([`check_key`]): a global key and keys per stream name
//!   or glob pattern (`team-*`); compared in constant time. Missing → 401,
//!   wrong → 403 (WebSocket close 1008).
//! - **Signed viewer URLs** ([`sign`], [`verify`]): when a secret applies to
//!   a stream, every watch path needs `?exp=UNIX&sig=HEX` where `sig` is
//!   `HMAC-SHA256(secret, "/live/" + name + exp)` in hex. The signed path is
//!   the stream's canonical `/live/{name}` whatever the transport, so one
//!   signed link works for every transport the player may pick.
//! - **Callbacks** ([`Auth::callback`]), like nginx-rtmp's `on_publish` /
//!   `on_play`: the relay POSTs `{"action", "name", "addr", "key"?}` as JSON
//!   to a configured `http://` or `https://` URL before accepting a publisher
//!   or viewer; a 2xx answer allows, any other status denies (403). An
//!   `https://` callback's certificate must chain to the system's roots or to
//!   a certificate in `callback_ca`. A timeout or a failed request (an
//!   untrusted certificate too) takes the configured default. Answers are cached briefly per
//!   (action, name, client IP) so that polling viewers do not ask every poll.
//!
//! The admission functions that put these together per transport are
//! [`crate::ingest::authorize`] and [`crate::egress::authorize`].

use crate::Error;
use crate::fanout::serde_secs;
use crate::limits::{Reason, Refused};
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Viewer signatures and callbacks (publish keys are in the ingest config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// One signing secret for every stream: all watch paths need a signed URL.
    pub view_secret: Option<String>,
    /// Signing secrets per stream name or glob pattern (`vip-*`); these win
    /// over `view_secret`.
    pub view_secrets: BTreeMap<String, String>,
    /// URL POSTed before a publisher is accepted (`http://` or `https://`).
    pub on_publish: Option<String>,
    /// URL POSTed before a viewer is accepted (`http://` or `https://`).
    pub on_play: Option<String>,
    /// PEM file of CA certificates trusted for `https://` callbacks, in
    /// addition to the system's roots (a hook service with a private CA or a
    /// self-signed certificate).
    pub callback_ca: Option<PathBuf>,
    /// How long a callback may take.
    #[serde(with = "serde_secs")]
    pub callback_timeout: Duration,
    /// What a callback that times out or fails decides (default: deny).
    pub callback_allow_on_error: bool,
    /// How long a callback's answer is reused for the same action, stream and client IP.
    #[serde(with = "serde_secs")]
    pub callback_cache: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            view_secret: None,
            view_secrets: BTreeMap::new(),
            on_publish: None,
            on_play: None,
            callback_ca: None,
            callback_timeout: Duration::from_secs(2),
            callback_allow_on_error: false,
            callback_cache: Duration::from_secs(10),
        }
    }
}

impl AuthConfig {
    /// The signing secret for `name`, if its URLs must be signed.
    pub fn view_secret_for(&self, name: &str) -> Option<&str> {
        lookup(&self.view_secrets, name).or(self.view_secret.as_deref())
    }
}

/// A key of `ingest.keys` / `auth.view_secrets`: a stream name, or a glob
/// pattern over names (`*` any run, `?` one character), 1 to 64 of
/// `[A-Za-z0-9_-*?]`.
pub fn valid_pattern(pattern: &str) -> bool {
    (1..=64).contains(&pattern.len())
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-*?".contains(&b))
}

/// Does `name` match the glob `pattern` (`*` any run, `?` one character)?
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The value for `name` in a map keyed by names and glob patterns: an exact
/// name first, else the matching pattern with the most literal characters
/// (the most specific), ties to the first in order.
pub fn lookup<'a>(map: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    if let Some(v) = map.get(name) {
        return Some(v);
    }
    map.iter()
        .filter(|(p, _)| p.contains(['*', '?']) && glob_match(p, name))
        .max_by_key(|(p, _)| {
            (
                p.bytes().filter(|&b| b != b'*' && b != b'?').count(),
                std::cmp::Reverse(p.as_str()),
            )
        })
        .map(|(_, v)| v.as_str())
}

/// Check a publisher's key for `name` (constant-time): 401 when one is
/// required and none was given, 403 when it is wrong. Refusals are counted.
/// `want` is the key the configuration gives for `name`
/// (`IngestConfig::key_for`), `None` when publishing it needs none.
pub fn check_key(
    want: Option<&str>,
    refused: &Refused,
    name: &str,
    given: Option<&str>,
) -> Result<(), Error> {
    let Some(want) = want else {
        return Ok(());
    };
    match given {
        None => {
            refused.count(Reason::MissingKey);
            Err(Error::Unauthorized(format!(
                "publishing {name:?} needs a key (?key= or Authorization: Bearer)"
            )))
        }
        Some(k) if keys_equal(k, want) => Ok(()),
        Some(_) => {
            refused.count(Reason::WrongKey);
            Err(Error::Forbidden(format!("wrong publish key for {name:?}")))
        }
    }
}

/// Two keys compared in constant time: their SHA-256 digests are (equal
/// length whatever the keys' lengths, so neither the comparison nor an early
/// length check tells how long the configured key is).
pub fn keys_equal(given: &str, want: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(want.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The message a viewer URL's signature covers (version 2): a fixed tag,
/// then the name length-prefixed, then `exp` as 8 bytes. Unambiguous: no two
/// (name, exp) pairs give the same bytes (version 1 signed
/// `/live/{name}{exp}`, where `cam1` + `60` and `cam` + `160` collided).
pub fn signed_message(name: &str, exp: u64) -> Vec<u8> {
    const TAG: &[u8] = b"relaycast view url v2\0";
    let mut m = Vec::with_capacity(TAG.len() + 2 + name.len() + 8);
    m.extend_from_slice(TAG);
    // Stream names are at most 64 bytes; a longer one cannot be valid, but
    // the length is written in full either way.
    m.extend_from_slice(&(name.len() as u64).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&exp.to_be_bytes());
    m
}

/// The MAC over [`signed_message`]. (HMAC takes keys of any length, so
/// `None` does not happen in practice.)
fn mac(secret: &str, name: &str, exp: u64) -> Option<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    m.update(&signed_message(name, exp));
    Some(m)
}

/// The hex signature of a viewer URL for stream `name` valid until `exp` (Unix seconds).
pub fn sign(secret: &str, name: &str, exp: u64) -> String {
    mac(secret, name, exp)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// `exp=…&sig=…` for `name`, valid for `ttl` from now.
pub fn signed_query(secret: &str, name: &str, ttl: Duration) -> String {
    let exp = unix_now().saturating_add(ttl.as_secs());
    format!("exp={exp}&sig={}", sign(secret, name, exp))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Check a viewer's signature for `name` at `now` (constant-time).
pub fn verify(
    secret: &str,
    name: &str,
    exp: Option<u64>,
    sig: Option<&str>,
    now: u64,
) -> Result<(), Error> {
    let (Some(exp), Some(sig)) = (exp, sig) else {
        return Err(Error::Forbidden(format!(
            "watching {name:?} needs a signed URL (?exp=…&sig=…)"
        )));
    };
    if exp < now {
        return Err(Error::Forbidden(format!(
            "signed URL for {name:?} expired {} s ago",
            now - exp
        )));
    }
    let Ok(raw) = hex::decode(sig) else {
        return Err(Error::Forbidden("signature is not hex".into()));
    };
    mac(secret, name, exp)
        .and_then(|m| m.verify_slice(&raw).ok())
        .ok_or_else(|| Error::Forbidden(format!("bad signature for {name:?}")))
}

/// What a callback is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A publisher wants to start a stream (`on_publish`).
    Publish,
    /// A viewer wants to watch (`on_play`).
    Play,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

/// The callback's JSON body.
#[derive(Debug, Serialize)]
struct CallbackBody<'a> {
    action: &'static str,
    name: &'a str,
    addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

type CacheKey = (Action, String, Option<IpAddr>);

/// Runtime side of access control: configuration, callback answers cache.
pub struct Auth {
    config: AuthConfig,
    cache: DashMap<CacheKey, (Instant, bool)>,
    /// The TLS client for `https://` callbacks (built when one is
    /// configured), or why it could not be built.
    tls: Option<Result<tokio_rustls::TlsConnector, String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("config", &self.config)
            .field("cached", &self.cache.len())
            .field(
                "tls",
                &self.tls.as_ref().map(|t| t.as_ref().map(|_| "ready")),
            )
            .finish()
    }
}

/// The TLS client of `https://` callbacks: the system's roots plus the
/// certificates in `ca` (PEM).
pub fn callback_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let roots = crate::tls::roots(ca, "auth.callback_ca")?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// Most cached callback answers before expired ones are swept.
const CACHE_MAX: usize = 10_000;

impl Auth {
    /// From configuration. A `callback_ca` that cannot be read makes every
    /// `https://` callback fail (and take the default); [`Auth::try_new`]
    /// refuses it instead.
    pub fn new(config: AuthConfig) -> Auth {
        let tls = Self::tls_for(&config);
        if let Some(Err(e)) = &tls {
            tracing::error!(error = %e, "https callbacks will fail and take the default");
        }
        Auth {
            config,
            cache: DashMap::new(),
            tls,
        }
    }

    /// From configuration; a `callback_ca` that cannot be read is an error.
    pub fn try_new(config: AuthConfig) -> anyhow::Result<Auth> {
        let tls = Self::tls_for(&config);
        if let Some(Err(e)) = &tls {
            anyhow::bail!("{e}");
        }
        Ok(Auth {
            config,
            cache: DashMap::new(),
            tls,
        })
    }

    /// The TLS client of `https://` callbacks, when `config` has any.
    fn tls_for(config: &AuthConfig) -> Option<Result<tokio_rustls::TlsConnector, String>> {
        let https = [&config.on_publish, &config.on_play].iter().any(|u| {
            u.as_deref()
                .and_then(|u| u.get(..8))
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        });
        (https || config.callback_ca.is_some())
            .then(|| callback_connector(config.callback_ca.as_deref()))
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Check a viewer's signed URL when `name` needs one; refusals counted.
    pub fn check_signature(
        &self,
        refused: &Refused,
        name: &str,
        exp: Option<u64>,
        sig: Option<&str>,
    ) -> Result<(), Error> {
        let Some(secret) = self.config.view_secret_for(name) else {
            return Ok(());
        };
        verify(secret, name, exp, sig, unix_now()).inspect_err(|_| {
            refused.count(Reason::BadSignature);
        })
    }

    /// The `(exp, sig)` an edge presents to its origin when it pulls `name`
    /// (cascade), valid for `ttl`: an edge holds the same view secrets as
    /// its origin and signs its own upstream subscription, so a viewer's
    /// right, checked at the edge, carries on to the origin. `None` when
    /// `name` needs no signature here.
    pub fn upstream_signature(&self, name: &str, ttl: Duration) -> Option<(u64, String)> {
        let secret = self.config.view_secret_for(name)?;
        let exp = unix_now().saturating_add(ttl.as_secs());
        Some((exp, sign(secret, name, exp)))
    }

    /// Ask the configured callback for `action`, if any: `Ok` to accept,
    /// `Forbidden` (counted) to refuse.
    pub async fn callback(
        &self,
        refused: &Refused,
        action: Action,
        name: &str,
        addr: Option<SocketAddr>,
        key: Option<&str>,
    ) -> Result<(), Error> {
        let url = match action {
            Action::Publish => self.config.on_publish.as_deref(),
            Action::Play => self.config.on_play.as_deref(),
        };
        let Some(url) = url else {
            return Ok(());
        };
        let cache_key = (action, name.to_string(), addr.map(|a| a.ip()));
        let ttl = self.config.callback_cache;
        let cached = self
            .cache
            .get(&cache_key)
            .filter(|e| e.0.elapsed() < ttl)
            .map(|e| e.1);
        let allow = match cached {
            Some(a) => a,
            None => {
                let body = CallbackBody {
                    action: action.name(),
                    name,
                    addr: addr.map(|a| a.to_string()),
                    key,
                };
                let asked = tokio::time::timeout(
                    self.config.callback_timeout,
                    post(url, &body, self.tls.as_ref()),
                );
                match asked.await {
                    Ok(Ok(status)) => {
                        let allow = (200..300).contains(&status);
                        if !ttl.is_zero() {
                            if self.cache.len() >= CACHE_MAX {
                                self.cache.retain(|_, e| e.0.elapsed() < ttl);
                            }
                            self.cache.insert(cache_key, (Instant::now(), allow));
                        }
                        if !allow {
                            tracing::info!(stream = %name, action = action.name(), status, "callback denied");
                        }
                        allow
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(url, error = %e, "callback failed; using the default");
                        self.config.callback_allow_on_error
                    }
                    Err(_) => {
                        tracing::warn!(url, "callback timed out; using the default");
                        self.config.callback_allow_on_error
                    }
                }
            }
        };
        if allow {
            Ok(())
        } else {
            refused.count(Reason::CallbackDenied);
            Err(Error::Forbidden(format!(
                "{} of {name:?} denied by the on_{} callback",
                action.name(),
                action.name()
            )))
        }
    }
}

/// POST `body` as JSON to an `http://` or `https://` URL (the latter with
/// `tls`); the response status.
async fn post(
    url: &str,
    body: &CallbackBody<'_>,
    tls: Option<&Result<tokio_rustls::TlsConnector, String>>,
) -> Result<u16, Error> {
    let bad = |m: String| Error::Internal(format!("callback {url}: {m}"));
    let u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let https = match u.scheme() {
        "http" => false,
        "https" => true,
        _ => {
            return Err(bad(
                "only http:// and https:// callbacks are supported".into()
            ));
        }
    };
    let host = u.host_str().ok_or_else(|| bad("no host".into()))?;
    let port = u
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    // An IPv6 literal comes bracketed in URLs, bare in socket addresses.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| bad(format!("connecting: {e}")))?;
    let json = serde_json::to_vec(body).map_err(|e| bad(e.to_string()))?;
    if https {
        let tls = match tls {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(bad(e.clone())),
            None => return Err(bad("no TLS client for https callbacks".into())),
        };
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| bad(format!("server name {bare:?}: {e}")))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| bad(format!("TLS: {e}")))?;
        send(url, &u, host, port, json, stream).await
    } else {
        send(url, &u, host, port, json, tcp).await
    }
}

/// The callback's request and response on an established connection.
async fn send<IO>(
    url: &str,
    u: &url::Url,
    host: &str,
    port: u16,
    json: Vec<u8>,
    io: IO,
) -> Result<u16, Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let bad = |m: String| Error::Internal(format!("callback {url}: {m}"));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| bad(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::post(&u[url::Position::BeforePath..])
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "relaycast")
        .body(http_body_util::Full::new(bytes::Bytes::from(json)))
        .map_err(|e| bad(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| bad(e.to_string()))?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("team-*", "team-a"));
        assert!(!glob_match("team-*", "teams"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-live-*", "x-live-y"));
        assert!(!glob_match("*-live-*", "x-live"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("abc", "abcd"));
    }

    #[test]
    fn lookup_prefers_exact_then_most_specific_pattern() {
        let map: BTreeMap<String, String> = [
            ("*", "any"),
            ("team-*", "team"),
            ("team-red-*", "red"),
            ("team-red-1", "exact"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(lookup(&map, "team-red-1"), Some("exact"));
        assert_eq!(lookup(&map, "team-red-2"), Some("red"));
        assert_eq!(lookup(&map, "team-blue"), Some("team"));
        assert_eq!(lookup(&map, "solo"), Some("any"));
        let empty = BTreeMap::new();
        assert_eq!(lookup(&empty, "x"), None);
    }

    #[test]
    fn keys_missing_wrong_right() {
        let mut c = crate::config::IngestConfig::default();
        let r = Refused::default();
        assert!(
            check_key(c.key_for("open"), &r, "open", None).is_ok(),
            "no key configured"
        );
        c.publish_key = Some("global".into());
        c.keys.insert("cam-*".into(), "cams".into());
        assert_eq!(
            check_key(c.key_for("x"), &r, "x", None).map_err(|e| e.http_status()),
            Err(401)
        );
        assert_eq!(
            check_key(c.key_for("x"), &r, "x", Some("nope")).map_err(|e| e.http_status()),
            Err(403)
        );
        assert!(check_key(c.key_for("x"), &r, "x", Some("global")).is_ok());
        assert!(check_key(c.key_for("cam-1"), &r, "cam-1", Some("cams")).is_ok());
        assert!(
            check_key(c.key_for("cam-1"), &r, "cam-1", Some("global")).is_err(),
            "the pattern's key replaces the global one"
        );
        assert_eq!(r.get(Reason::MissingKey), 1);
        assert_eq!(r.get(Reason::WrongKey), 2);
    }

    #[test]
    fn signed_messages_never_collide() {
        // The version-1 forgery: `cam1` until 60 signed the same bytes as
        // `cam` until 160.
        assert_ne!(signed_message("cam1", 60), signed_message("cam", 160));
        assert_ne!(
            sign("a-long-secret", "cam1", 60),
            sign("a-long-secret", "cam", 160)
        );
        // Injective: the message decodes back to exactly its (name, exp).
        let decode = |m: &[u8]| -> (String, u64) {
            let rest = &m[b"relaycast view url v2\0".len()..];
            let mut n = [0u8; 8];
            n.copy_from_slice(&rest[..8]);
            let len = u64::from_be_bytes(n) as usize;
            let name = String::from_utf8(rest[8..8 + len].to_vec()).expect("utf8");
            let mut e = [0u8; 8];
            e.copy_from_slice(&rest[8 + len..]);
            assert_eq!(rest.len(), 8 + len + 8);
            (name, u64::from_be_bytes(e))
        };
        let mut seen = std::collections::HashMap::new();
        for name in ["c", "ca", "cam", "cam1", "cam12", "1", "12", "a-b", "a_b"] {
            for exp in [0, 1, 2, 12, 60, 160, 1601, u64::MAX] {
                let m = signed_message(name, exp);
                assert_eq!(decode(&m), (name.to_string(), exp));
                assert!(seen.insert(m, (name, exp)).is_none(), "{name} {exp}");
            }
        }
    }

    #[test]
    fn keys_compare_by_digest() {
        assert!(keys_equal("secret-key", "secret-key"));
        assert!(!keys_equal("secret-key", "secret-kez"));
        assert!(!keys_equal("", "secret-key"));
        assert!(!keys_equal("secret", "secret-key"), "a prefix is not equal");
    }

    #[test]
    fn signatures() {
        let now = 1_700_000_000;
        let sig = sign("s3cret", "cam", now + 60);
        assert_eq!(sig.len(), 64);
        assert!(verify("s3cret", "cam", Some(now + 60), Some(&sig), now).is_ok());
        assert!(
            verify(
                "s3cret",
                "cam",
                Some(now + 60),
                Some(&sig.to_uppercase()),
                now
            )
            .is_ok(),
            "hex in either case"
        );
        let bad = [
            verify("s3cret", "cam", Some(now + 60), Some(&sig), now + 61), // expired
            verify("other", "cam", Some(now + 60), Some(&sig), now),       // wrong secret
            verify("s3cret", "cam2", Some(now + 60), Some(&sig), now),     // other stream
            verify("s3cret", "cam", Some(now + 61), Some(&sig), now),      // exp changed
            verify("s3cret", "cam", Some(now + 60), Some("zz"), now),      // not hex
            verify("s3cret", "cam", Some(now + 60), Some(&sig[..62]), now), // truncated
            verify("s3cret", "cam", None, None, now),                      // missing
        ];
        for (i, r) in bad.iter().enumerate() {
            assert_eq!(
                r.as_ref().map_err(|e| e.http_status()),
                Err(403),
                "case {i}"
            );
        }
        let mut c = AuthConfig::default();
        c.view_secrets.insert("vip-*".into(), "v".into());
        let auth = Auth::new(c);
        assert!(
            auth.upstream_signature("open", Duration::from_secs(60))
                .is_none()
        );
        let (exp, sig) = auth
            .upstream_signature("vip-1", Duration::from_secs(60))
            .expect("signed");
        let refused = Refused::default();
        assert!(
            auth.check_signature(&refused, "vip-1", Some(exp), Some(&sig))
                .is_ok()
        );
        let q = signed_query("k", "n", Duration::from_secs(3600));
        assert!(q.starts_with("exp=") && q.contains("&sig="), "{q}");
    }
}

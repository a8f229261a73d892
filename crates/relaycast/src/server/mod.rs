//! The HTTP server: one axum [`Router`] on one port for publishing, watching,
//! the player and the operator API; the extra listeners (raw TCP ingest,
//! [`quic`]); `/metrics` assembled from each part's figures; and graceful
//! shutdown with a deadline.

pub mod quic;
mod stream_h1;

use crate::config::Config;
use crate::egress::hls::Manifest;
use crate::egress::{self, WatchQuery};
use crate::fanout::{EndReason, Registry};
use crate::{Error, ingest};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub use crate::app::{AppState, Peer, error_response};

#[derive(Debug, Default, Deserialize)]
struct PublishQuery {
    key: Option<String>,
}

/// The router of the one HTTP port.
pub fn router(app: AppState) -> Router {
    let cors = cors_layer(&app.config.server.cors_origins);
    Router::new()
        .route(
            "/publish/{name}",
            get(publish_ws).put(publish_http).post(publish_http),
        )
        // CONNECT: WebSocket over HTTP/2 (RFC 8441 extended CONNECT).
        .route("/live/{name}", get(live).connect(live))
        .route("/live/{name}/poll", get(poll))
        .route("/live/{name}/init.mp4", get(init))
        .route("/live/{name}/info", get(info))
        .route("/live/{name}/index.m3u8", hls_manifest(Manifest::Media))
        .route(
            "/live/{name}/master.m3u8",
            hls_manifest(Manifest::Multivariant),
        )
        .route("/live/{name}/manifest.mpd", hls_manifest(Manifest::Mpd))
        .route("/live/{name}/{epoch}/{kind}/{file}", get(hls_file))
        .route(egress::hls::TIME_PATH, get(clock))
        .route("/api/streams", get(streams))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/watch/{name}", get(watch_page))
        .route("/broadcast/{name}", get(broadcast_page))
        .route("/player/{*file}", get(player_file))
        .layer(axum::middleware::from_fn(crate::logging::session_span))
        .layer(egress::socketio::layer(app.clone()))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            egress::socketio::limit_clients,
        ))
        // Outside the Socket.IO layer: the handshake rules hold for /socket.io/ too.
        .layer(axum::middleware::from_fn(crate::app::ws::handshake))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(cors)
        .with_state(app)
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::PUT, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers(Any)
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

async fn publish_http(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PublishQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest::http::serve(app, name, q.key, headers, peer, body).await
}

async fn publish_ws(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PublishQuery>,
    Peer(peer): Peer,
    req: Request,
) -> Response {
    let (mut parts, _) = req.into_parts();
    match crate::app::ws::upgrade(&mut parts) {
        Some(up) => ingest::websocket::serve(app, name, q.key, parts.headers, peer, up).await,
        None => error_response(&Error::BadRequest(format!(
            "GET /publish/{name} needs Upgrade: websocket; to publish over HTTP use PUT or POST"
        ))),
    }
}

async fn live(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
    Peer(peer): Peer,
    req: Request,
) -> Response {
    if let Some(base) = name.strip_suffix(".mp4") {
        let take_over = req
            .extensions()
            .get::<egress::http_stream::TakeOver>()
            .cloned();
        return egress::http_stream::serve(app, base.to_string(), q, peer, take_over).await;
    }
    let (mut parts, _) = req.into_parts();
    match egress::websocket::upgrade(&mut parts) {
        Some(up) => egress::websocket::serve(app, name, q, peer, up).await,
        None => error_response(&Error::BadRequest(format!(
            "GET /live/{name} needs Upgrade: websocket; for HTTP streaming use /live/{name}.mp4"
        ))),
    }
}

async fn poll(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
    Peer(peer): Peer,
) -> Response {
    egress::poll::serve(app, name, q, peer).await
}

async fn init(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
    Peer(peer): Peer,
) -> Response {
    egress::poll::init(app, name, q, peer).await
}

async fn info(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
    Peer(peer): Peer,
) -> Response {
    if let Err(e) = egress::authorize(&app, &name, q.exp, q.sig.as_deref(), peer).await {
        return error_response(&e);
    }
    match app.registry.find(&name, app.wait_for(q.wait)).await {
        Ok(s) => axum::Json(s.info()).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `index.m3u8`, `master.m3u8` or `manifest.mpd` (one handler, told which).
fn hls_manifest(which: egress::hls::Manifest) -> axum::routing::MethodRouter<AppState> {
    get(
        move |State(app): State<AppState>,
              Path(name): Path<String>,
              Query(q): Query<WatchQuery>,
              RawQuery(raw): RawQuery,
              Peer(peer): Peer,
              headers: HeaderMap| async move {
            egress::hls::manifest(app, name, which, q, raw, headers, peer).await
        },
    )
}

async fn hls_file(
    State(app): State<AppState>,
    Path((name, epoch, kind, file)): Path<(String, String, String, String)>,
    Query(q): Query<WatchQuery>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Response {
    egress::hls::file(app, name, epoch, kind, file, q, headers, peer).await
}

async fn clock() -> Response {
    egress::hls::clock()
}

/// Every stream for operators; for anyone else only the streams anyone may
/// watch (no signed URL needed): the player's stream list.
async fn streams(State(app): State<AppState>, Peer(peer): Peer, headers: HeaderMap) -> Response {
    let operator = crate::app::is_operator(&app, peer, &headers);
    let list: Vec<_> = app
        .registry
        .list()
        .iter()
        .filter(|s| operator || app.config.auth.view_secret_for(s.name()).is_none())
        .map(|s| s.info())
        .collect();
    axum::Json(serde_json::json!({ "streams": list })).into_response()
}

async fn healthz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(app): State<AppState>, Peer(peer): Peer, headers: HeaderMap) -> Response {
    if !crate::app::is_operator(&app, peer, &headers) {
        return error_response(&Error::Forbidden(
            "/metrics is for operators: send Authorization: Bearer <server.operator_token>".into(),
        ));
    }
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let format = crate::metrics::Format::negotiate(Some(&accept.join(",")));
    match scrape(&app.registry, &app.limits.refused, format) {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                ),
                (header::VARY, HeaderValue::from_static("accept")),
            ],
            body,
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

/// The whole `/metrics` text (see [`crate::metrics`]) in `format`: the
/// core's figures, then the cascade's. Fails only when a collector does.
pub fn scrape(
    registry: &Registry,
    refused: &crate::limits::Refused,
    format: crate::metrics::Format,
) -> Result<String, Error> {
    crate::metrics::metrics_text(
        registry,
        refused,
        &[&|r: &Registry| Box::new(crate::cascade::Metrics::of(&r.list())) as _],
        format,
    )
}

/// [`scrape`] in the Prometheus text format 0.0.4 (what `/metrics` answers
/// by default); a collector's failure is written as a comment line.
pub fn metrics_text(registry: &Registry, refused: &crate::limits::Refused) -> String {
    scrape(registry, refused, crate::metrics::Format::Prometheus)
        .unwrap_or_else(|e| format!("# {e}\n"))
}

async fn index(State(app): State<AppState>) -> Response {
    crate::player::serve(app.config.server.player_dir.as_deref(), "index.html").await
}

async fn watch_page(State(app): State<AppState>, Path(_name): Path<String>) -> Response {
    crate::player::serve(app.config.server.player_dir.as_deref(), "watch.html").await
}

async fn broadcast_page(State(app): State<AppState>, Path(_name): Path<String>) -> Response {
    crate::player::serve(app.config.server.player_dir.as_deref(), "broadcast.html").await
}

async fn player_file(State(app): State<AppState>, Path(file): Path<String>) -> Response {
    crate::player::serve(app.config.server.player_dir.as_deref(), &file).await
}

/// A running relay.
pub struct Running {
    /// The HTTP address it listens on.
    pub addr: SocketAddr,
    /// Raw TCP ingest ports: (stream name, address).
    pub tcp_ingest: Vec<(String, SocketAddr)>,
    /// The RTMP ingest address, when enabled (`--rtmp`; the bound port when 0 was asked).
    pub rtmp: Option<SocketAddr>,
    /// The RTMPS ingest address, when enabled (`--rtmps`).
    pub rtmps: Option<SocketAddr>,
    /// The SRT ingest (UDP) address, when enabled (`--srt`).
    pub srt: Option<SocketAddr>,
    /// The WHIP ingest's WebRTC (UDP) address, when enabled (`--webrtc`).
    pub webrtc: Option<SocketAddr>,
    /// The QUIC endpoint's address and certificate fingerprint at start,
    /// when enabled ([`Running::quic_now`] follows certificate reloads).
    pub quic: Option<quic::Info>,
    quic_live: Option<Arc<quic::LiveInfo>>,
    /// Shared state (registry, config, shutdown token).
    pub state: AppState,
    /// TLS, when serving https/wss (reload it with [`crate::tls::Tls::reload`]).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The plain-HTTP redirect port, when configured.
    pub redirect_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The QUIC endpoint's address and the fingerprint of the certificate
    /// it serves now (as `GET /api/quic` reports it).
    pub fn quic_now(&self) -> Option<quic::Info> {
        self.quic_live.as_ref().map(|l| l.get())
    }

    /// Trigger shutdown and wait for the relay to drain, up to the
    /// configured deadline. Returns false when the deadline cut it short.
    pub async fn shutdown(self) -> bool {
        self.state.shutdown.cancel();
        self.wait().await
    }

    /// Wait for the relay to stop after its shutdown token was cancelled.
    pub async fn wait(self) -> bool {
        self.state.shutdown.cancelled().await;
        let deadline = self.state.config.server.shutdown_timeout;
        let registry = self.state.registry.clone();
        let sessions = registry.clone();
        let drained = tokio::time::timeout(deadline, async move {
            let _ = self.http.await;
            for t in self.tasks {
                let _ = t.await;
            }
            // Upgraded WebSockets (and other detached sessions) are no longer
            // hyper's: wait for their viewers and publishers to say goodbye.
            sessions.sessions_ended().await;
        })
        .await
        .is_ok();
        registry.close_all(EndReason::Shutdown);
        drained
    }
}

/// Binds the HTTP listener with a deep accept queue (4096, capped by the
/// kernel's somaxconn): with the default 128 a join storm of a thousand
/// viewers overflows it and the dropped SYNs come back a second later.
fn bind_http(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Bind every listener of `config` and start serving. The HTTP listener may
/// be passed in (tests bind `127.0.0.1:0` themselves).
pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Running> {
    let listener = match listener {
        Some(l) => l,
        None => bind_http(config.server.listen)
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.server.listen))?,
    };
    let addr = listener.local_addr()?;
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => Some(Arc::new(crate::tls::Tls::load(c, k)?)),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    let redirect = match (config.server.http_redirect, &tls) {
        (Some(a), Some(_)) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("listening on {a} (http_redirect): {e}"))?,
        ),
        (Some(_), None) => anyhow::bail!("http_redirect needs TLS (tls_cert and tls_key)"),
        (None, _) => None,
    };
    let redirect_addr = redirect.as_ref().map(|l| l.local_addr()).transpose()?;
    let registry = Registry::new(config.fanout.clone());
    let state = AppState {
        registry: registry.clone(),
        auth: Arc::new(crate::auth::Auth::try_new(config.auth.clone())?),
        limits: Arc::new(crate::limits::Limits::new(config.limits.clone())),
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
    };
    let mut tasks = Vec::new();
    let mut tcp_ingest = Vec::new();
    for (l, port) in ingest::tcp::bind(addr.ip(), &state.config.ingest.tcp).await? {
        tcp_ingest.push((port.name.clone(), l.local_addr()?));
        tasks.push(tokio::spawn(ingest::tcp::run(l, port, state.clone())));
    }
    let rtmp_cfg = &state.config.ingest.rtmp;
    let mut rtmp = None;
    let mut rtmps = None;
    for (addr, secure, slot) in [
        (rtmp_cfg.listen, false, &mut rtmp),
        (rtmp_cfg.tls_listen, true, &mut rtmps),
    ] {
        let Some(a) = addr else { continue };
        let tls = match (secure, &tls) {
            (false, _) => None,
            (true, Some(t)) => Some(t.clone()),
            (true, None) => anyhow::bail!("--rtmps needs --tls-cert and --tls-key"),
        };
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {a} (RTMP ingest): {e}"))?;
        *slot = Some(l.local_addr()?);
        tasks.push(tokio::spawn(ingest::rtmp::run(l, tls, state.clone())));
    }
    let srt = match state.config.ingest.srt.listen {
        Some(a) => {
            let (bound, task) = ingest::srt::start(a, state.clone()).await?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let (whip, webrtc) = match state.config.ingest.whip.listen {
        Some(a) => {
            let (whip, bound, task) = ingest::whip::start(a, state.clone()).await?;
            tasks.push(task);
            (Some(whip), Some(bound))
        }
        None => (None, None),
    };
    if state.config.server.demo {
        tasks.push(tokio::spawn(ingest::demo::run(
            registry.clone(),
            "demo".into(),
            state.shutdown.clone(),
        )));
    }
    if let Some(l) = redirect {
        let router = crate::tls::redirect_router(addr.port());
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let _ = accept_loop(l, router, None, state).await;
        }));
    }
    // QUIC (relaycast/1) and the cascade's edge side: see src/quic, src/cascade.
    let mut reloads: Vec<Reload> = Vec::new();
    if let Some(tls) = &tls {
        let tls = tls.clone();
        reloads.push(Box::new(move || match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
            }
        }));
    }
    let quic_live = quic::start(&state, &mut tasks, &mut reloads)?;
    // Registered here, before `start` returns, so that a SIGHUP sent right
    // after start reloads (or is logged) rather than kills the process.
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hup) => tasks.push(tokio::spawn(on_sighup(
                hup,
                reloads,
                state.shutdown.clone(),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: certificate reload disabled")
            }
        }
    }
    let quic = quic_live.as_ref().map(|l| l.get());
    if let Some(edge) = crate::cascade::Edge::new(
        &state.config.cascade,
        state.config.ingest.max_box_size,
        state.shutdown.clone(),
    )? {
        edge.set_auth(state.auth.clone());
        registry.set_source(Arc::new(edge));
    }
    // The QUIC info route first: the router with its layers (Socket.IO, CORS)
    // is merged in last so that its fallback, which Socket.IO serves, stays.
    // It gets the same CORS layer: a player on another origin reads it too.
    let app = quic::api_router(quic_live.clone())
        .layer(cors_layer(&state.config.server.cors_origins))
        .merge(ingest::whip::router(state.clone(), whip))
        .merge(router(state.clone()));
    let http = tokio::spawn(accept_loop(listener, app, tls.clone(), state.clone()));
    Ok(Running {
        addr,
        tcp_ingest,
        rtmp,
        rtmps,
        srt,
        webrtc,
        quic,
        quic_live,
        state,
        tls,
        redirect_addr,
        tasks,
        http,
    })
}

/// Something SIGHUP reloads (a certificate).
pub type Reload = Box<dyn Fn() + Send + Sync>;

/// Run every reload on each SIGHUP until shutdown. SIGHUP never stops the
/// relay (log rotation sends it): with nothing to reload it is logged and
/// ignored.
async fn on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloads: Vec<Reload>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = shutdown.cancelled() => return,
        }
        if reloads.is_empty() {
            tracing::info!(
                "SIGHUP: nothing to reload (no TLS certificate configured); still serving"
            );
        }
        for reload in &reloads {
            reload();
        }
    }
}

/// Accept connections until shutdown, each served by hyper over plain TCP
/// or TLS: HTTP/1.1 (with upgrades for WebSocket), or HTTP/2 when the client
/// asks for it (ALPN `h2` over TLS, the h2c preface over TCP). Per connection: the
/// client IP's connection limit, the header read timeout (slowloris; the TLS
/// handshake has the same bound), and on shutdown a graceful close. Returns
/// when every connection task ended (upgraded WebSockets run on their own
/// and watch the shutdown token).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<crate::tls::Tls>>,
    state: AppState,
) -> std::io::Result<()> {
    // Every connection task holds a sender; all dropped = all done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut accept_errors = crate::app::AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = state.shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_errors.failed("http", &e).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            app.clone(),
            tls.clone(),
            state.clone(),
            done_tx.clone(),
        ));
    }
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<Arc<crate::tls::Tls>>,
    state: AppState,
    _done: tokio::sync::mpsc::Sender<()>,
) {
    let limits = state.limits.clone();
    let timeout = limits.config().header_read_timeout;
    let guard = match limits.connection(peer.ip()) {
        Ok(g) => g,
        Err(e) => {
            // Over the per-IP limit: refused at once, never held until a
            // timeout (a flood of them must not pin descriptors or memory).
            tracing::debug!(%peer, error = %e, "connection refused");
            match tls {
                None => {
                    // An h2c client (prior knowledge) is answered in HTTP/2
                    // and sent GOAWAY; anyone else gets the HTTP/1.1 answer.
                    // The wait for the first bytes is bounded like the whole
                    // refusal.
                    match tokio::time::timeout(REFUSE_DRAIN.1, h2_preface(&tcp)).await {
                        Ok(true) => refuse_h2(tcp, e).await,
                        _ => refuse_raw(tcp, &e).await,
                    }
                }
                Some(tls) => {
                    // Over TLS the answer needs the handshake: it is done
                    // within the refusal's time bound, then the client is
                    // answered in the protocol ALPN chose (a browser or curl
                    // shows the 429 and its reason instead of a reset).
                    let handshake = tls.acceptor().accept(tcp);
                    if let Ok(Ok(io)) = tokio::time::timeout(REFUSE_DRAIN.1, handshake).await {
                        if io.get_ref().1.alpn_protocol() == Some(b"h2") {
                            refuse_h2(io, e).await
                        } else {
                            refuse_raw(io, &e).await
                        }
                    }
                }
            }
            return;
        }
    };
    let Some(tls) = tls else {
        // h2c with prior knowledge: the client's first bytes are the HTTP/2
        // preface; an HTTP streaming viewer's `GET /live/{name}.mp4` is
        // served without hyper (`stream_h1`). Waiting for either is under
        // the header timeout too.
        let direct = state.config.egress.ws_direct_write;
        let first = async {
            if h2_preface(&tcp).await {
                First::H2
            } else if !direct {
                First::Http1
            } else if let Some(req) = stream_h1::peek(&tcp).await {
                First::Stream(req)
            } else {
                First::Http1
            }
        };
        let first = tokio::select! {
            h = tokio::time::timeout(timeout, first) => match h {
                Ok(f) => f,
                Err(_) => {
                    limits.refused.count(crate::limits::Reason::HeaderTimeout);
                    tracing::debug!(%peer, "closed: no request within the header timeout");
                    return;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        return match first {
            First::H2 => serve_io(tcp, true, guard, peer, app, state).await,
            First::Http1 => serve_io(tcp, false, guard, peer, app, state).await,
            First::Stream(req) => stream_h1::serve(tcp, req, guard, peer, app, state).await,
        };
    };
    let handshake = tokio::select! {
        h = tokio::time::timeout(timeout, tls.acceptor().accept(tcp)) => h,
        _ = state.shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(io)) => {
            // h2 over TLS is chosen by ALPN (RFC 9113 §3.2).
            let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_io(io, h2, guard, peer, app, state).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            limits.refused.count(crate::limits::Reason::HeaderTimeout);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Most of a refused connection's request read (and dropped) after the
/// answer, and for how long: enough for the client to read the 429 instead
/// of a reset, bounded so a refusal holds nothing.
const REFUSE_DRAIN: (usize, Duration) = (16 << 10, Duration::from_millis(500));

/// Answer a refused HTTP/1 connection (plain or TLS) with the error (429 + JSON +
/// `Retry-After` + `Connection: close`) without reading its request, then
/// close it gracefully.
async fn refuse_raw<IO>(tcp: IO, e: &Error)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    answer_and_close(tcp, head.as_bytes(), body.as_bytes()).await;
}

/// Writes a whole HTTP/1 answer (a refusal, an error), closes the writing
/// side, and reads (and drops) what the client still sends for a moment,
/// so that closing does not reset the answer away; all of it bounded by
/// [`REFUSE_DRAIN`], so it holds nothing.
async fn answer_and_close<IO>(mut tcp: IO, head: &[u8], body: &[u8])
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bye = async {
        tcp.write_all(head).await?;
        tcp.write_all(body).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = REFUSE_DRAIN.0;
        while left > 0 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_DRAIN.1, bye).await;
}

/// Answer a refused HTTP/2 connection (h2c or h2 over TLS) in HTTP/2: every request it managed to
/// send gets the error (429 + JSON + `Retry-After`), and the first one starts
/// hyper's graceful shutdown (GOAWAY, RFC 9113 §6.8), after which the
/// connection closes once those answers are out. The whole refusal is
/// bounded by [`REFUSE_DRAIN`]'s time, so it holds nothing.
async fn refuse_h2<IO>(tcp: IO, e: Error)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let e = Arc::new(e);
    let first = Arc::new(tokio::sync::Notify::new());
    let asked = first.clone();
    let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
        asked.notify_one();
        let r = error_response(&e);
        async move { Ok::<_, std::convert::Infallible>(r) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
    tokio::pin!(conn);
    let work = async {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = first.notified() => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.as_mut().await
    };
    let _ = tokio::time::timeout(REFUSE_DRAIN.1, work).await;
}

/// What a plain connection's first bytes are.
enum First {
    /// The HTTP/2 preface (h2c with prior knowledge).
    H2,
    /// An HTTP streaming viewer's request (see [`stream_h1`]).
    Stream(stream_h1::Head),
    /// Anything else: HTTP/1 for hyper.
    Http1,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface (h2c with prior
/// knowledge), looking at its first bytes without taking them. Returns as
/// soon as they differ from the preface (an HTTP/1 request line).
async fn h2_preface(tcp: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 24];
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A preface split across packets: look again shortly (rare; the
        // caller's header timeout bounds it).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_io<IO>(
    io: IO,
    h2: bool,
    guard: crate::limits::ConnGuard,
    peer: SocketAddr,
    app: Router,
    state: AppState,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let limits = state.limits.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    // hyper's own builder for the protocol the connection speaks (ALPN or
    // the h2c preface decided it above), not hyper-util's `auto`: that one
    // wraps the I/O in a private type, and a WebSocket upgrade must give the
    // plain connection back (`Upgraded::downcast`) for the fan-out writers
    // to write to it directly (see `egress::websocket`).
    let io = TokioIo::new(
        crate::limits::Counted::new(io, guard)
            .with_write_deadline(limits.config().write_stall_timeout, limits.refused.clone()),
    );
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSockets over h2 (RFC 8441).
        builder.timer(TokioTimer::new()).enable_connect_protocol();
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        until_shutdown(conn, &state.shutdown, |c| c.graceful_shutdown()).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.config().header_read_timeout);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        until_shutdown(conn, &state.shutdown, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = result {
        if e.is_timeout() {
            limits.refused.count(crate::limits::Reason::HeaderTimeout);
            tracing::debug!(%peer, "closed: request headers not in within the timeout");
        } else {
            tracing::debug!(%peer, error = %e, "connection error");
        }
    }
}

/// Drives a connection; at the relay's shutdown, `graceful` starts its
/// graceful shutdown (GOAWAY, or closing when idle) and it runs to its end.
async fn until_shutdown<C>(
    mut conn: Pin<&mut C>,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

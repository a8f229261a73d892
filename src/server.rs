//! The HTTP server: one axum [`Router`] on one port for publishing, watching,
//! the player and the operator API; the extra listeners (raw TCP ingest,
//! QUIC); and graceful shutdown with a deadline.

use crate::config::Config;
use crate::egress::{self, WatchQuery};
use crate::fanout::{EndReason, Registry};
use crate::{Error, ingest};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Every stream.
    pub registry: Registry,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Cancelled on SIGINT/SIGTERM: every long-lived task watches it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// A viewer's `wait=` clamped to the configured maximum.
    pub fn wait_for(&self, wait: Option<f64>) -> Duration {
        wait.and_then(|w| Duration::try_from_secs_f64(w).ok())
            .unwrap_or(Duration::ZERO)
            .min(self.config.egress.max_wait)
    }
}

/// An error as an HTTP response: its status and a one-line JSON body.
pub fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (
        status,
        axum::Json(serde_json::json!({"error": e.to_string()})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

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
        .route("/live/{name}", get(live))
        .route("/live/{name}/poll", get(poll))
        .route("/live/{name}/init.mp4", get(init))
        .route("/live/{name}/info", get(info))
        .route("/api/streams", get(streams))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/watch/{name}", get(watch_page))
        .route("/broadcast/{name}", get(broadcast_page))
        .route("/player/{*file}", get(player_file))
        .layer(egress::socketio::layer(app.clone()))
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
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest::http::serve(app, name, q.key, headers, body).await
}

async fn publish_ws(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PublishQuery>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    ingest::websocket::serve(app, name, q.key, headers, ws).await
}

async fn live(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
    req: Request,
) -> Response {
    if let Some(base) = name.strip_suffix(".mp4") {
        return egress::http_stream::serve(app, base.to_string(), q).await;
    }
    let (mut parts, _) = req.into_parts();
    match egress::websocket::upgrade(&mut parts) {
        Some(up) => egress::websocket::serve(app, name, q, up).await,
        None => error_response(&Error::BadRequest(format!(
            "GET /live/{name} needs Upgrade: websocket; for HTTP streaming use /live/{name}.mp4"
        ))),
    }
}

async fn poll(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
) -> Response {
    egress::poll::serve(app, name, q).await
}

async fn init(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
) -> Response {
    egress::poll::init(app, name, q).await
}

async fn info(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
) -> Response {
    match app.registry.find(&name, app.wait_for(q.wait)).await {
        Ok(s) => axum::Json(s.info()).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn streams(State(app): State<AppState>) -> Response {
    let list: Vec<_> = app.registry.list().iter().map(|s| s.info()).collect();
    axum::Json(serde_json::json!({ "streams": list })).into_response()
}

async fn healthz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let body = crate::server::metrics_text(&app.registry);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

/// Prometheus text exposition of every stream's counters.
pub fn metrics_text(registry: &Registry) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let streams = registry.list();
    let _ = writeln!(out, "# TYPE relaycast_streams gauge");
    let _ = writeln!(out, "relaycast_streams {}", streams.len());
    type Get = fn(&crate::fanout::StreamStats) -> u64;
    let counters: [(&str, &str, Get); 7] = [
        ("relaycast_bytes_in_total", "counter", |s| {
            s.bytes_in.load(Relaxed)
        }),
        ("relaycast_fragments_in_total", "counter", |s| {
            s.fragments_in.load(Relaxed)
        }),
        ("relaycast_bytes_out_total", "counter", |s| {
            s.bytes_out.load(Relaxed)
        }),
        ("relaycast_fragments_out_total", "counter", |s| {
            s.fragments_out.load(Relaxed)
        }),
        ("relaycast_skips_total", "counter", |s| {
            s.skips.load(Relaxed)
        }),
        ("relaycast_lag_disconnects_total", "counter", |s| {
            s.lag_disconnects.load(Relaxed)
        }),
        ("relaycast_publishes_total", "counter", |s| {
            s.publishes.load(Relaxed)
        }),
    ];
    for (metric, kind, get) in counters {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for s in &streams {
            let _ = writeln!(
                out,
                "{metric}{{stream=\"{}\"}} {}",
                s.name(),
                get(s.stats())
            );
        }
    }
    let _ = writeln!(out, "# TYPE relaycast_viewers gauge");
    for s in &streams {
        for t in egress::Transport::ALL {
            let n = s.stats().viewers[t as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "relaycast_viewers{{stream=\"{}\",transport=\"{}\"}} {n}",
                s.name(),
                t.name()
            );
        }
    }
    let _ = writeln!(out, "# TYPE relaycast_stream_live gauge");
    for s in &streams {
        let _ = writeln!(
            out,
            "relaycast_stream_live{{stream=\"{}\"}} {}",
            s.name(),
            u8::from(s.is_live())
        );
    }
    out
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
    /// Shared state (registry, config, shutdown token).
    pub state: AppState,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Running {
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
        let drained = tokio::time::timeout(deadline, async move {
            let _ = self.http.await;
            for t in self.tasks {
                let _ = t.await;
            }
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
    let registry = Registry::new(config.fanout.clone());
    let state = AppState {
        registry: registry.clone(),
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
    };
    let mut tasks = Vec::new();
    let mut tcp_ingest = Vec::new();
    for (l, name) in ingest::tcp::bind(addr.ip(), &state.config.ingest.tcp).await? {
        tcp_ingest.push((name.clone(), l.local_addr()?));
        tasks.push(tokio::spawn(ingest::tcp::run(l, name, state.clone())));
    }
    if state.config.server.demo {
        tasks.push(tokio::spawn(ingest::demo::run(
            registry.clone(),
            "demo".into(),
            state.shutdown.clone(),
        )));
    }
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let token = state.shutdown.clone();
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });
    Ok(Running {
        addr,
        tcp_ingest,
        state,
        tasks,
        http,
    })
}

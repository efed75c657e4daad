//! The Pingora service: Host -> app -> dyno, Heroku's forwarding headers, and the router's own
//! error pages.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::sync::watch;

use crate::RouterError;
use crate::pages::page;
use crate::table::{AppRoute, RouteTable};

/// Receives one Heroku-style router line per routed request. Called on the router's threads
/// after each response, so implementations must not block.
pub trait AccessLog: Send + Sync {
    /// `line` is `at=info method=GET path="/" host=... status=200 ...` for `app`.
    fn request(&self, app: &str, line: &str);
}

/// Where and how the router runs.
#[derive(Clone)]
pub struct RouterConfig {
    /// The public HTTP listen address.
    pub listen: SocketAddr,
    /// Worker threads for the router's own runtime.
    pub threads: usize,
    /// A private folder for Pingora's pid and upgrade socket files.
    pub run_dir: PathBuf,
    /// Gets every routed request's line (the app's `router` logs), besides `tracing`.
    pub access_log: Option<Arc<dyn AccessLog>>,
}

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field("listen", &self.listen)
            .field("threads", &self.threads)
            .field("run_dir", &self.run_dir)
            .field("access_log", &self.access_log.is_some())
            .finish()
    }
}

/// A running router; [`RouterHandle::shutdown`] stops it and waits for its thread.
pub struct RouterHandle {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RouterHandle {
    /// Stops the router and joins its thread.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the router on a plain thread. Pingora builds and owns its own runtimes there, so
/// call this before creating any tokio runtime in the process.
pub fn spawn_router(
    config: RouterConfig,
    table: Arc<RouteTable>,
) -> Result<RouterHandle, RouterError> {
    // Pingora exits the process on a bind failure; checking first turns it into an error.
    std::net::TcpListener::bind(config.listen).map_err(|source| RouterError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("skiff-router".into())
        .spawn(move || run(config, table, stop_rx))
        .map_err(RouterError::Thread)?;
    Ok(RouterHandle {
        stop,
        thread: Some(thread),
    })
}

fn run(config: RouterConfig, table: Arc<RouteTable>, stop: watch::Receiver<bool>) {
    let conf = ServerConf {
        threads: config.threads.max(1),
        pid_file: config.run_dir.join("router.pid").display().to_string(),
        upgrade_sock: config
            .run_dir
            .join("router-upgrade.sock")
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Router {
            table,
            port: config.listen.port(),
            access_log: config.access_log.clone(),
        },
        "skiff-router",
    );
    service.add_tcp(&config.listen.to_string());
    server.add_service(service);
    tracing::info!(listen = %config.listen, "router up");
    server.run(RunArgs {
        shutdown_signal: Box::new(StopWatch(stop)),
    });
    tracing::info!("router stopped");
}

/// Lets the platform, not Unix signals, decide when the router stops.
struct StopWatch(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}

struct Router {
    table: Arc<RouteTable>,
    port: u16,
    access_log: Option<Arc<dyn AccessLog>>,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    route: Option<Arc<AppRoute>>,
    dyno: Option<String>,
    request_id: String,
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            dyno: None,
            request_id: String::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("")
            .to_owned();
        ctx.request_id = request_id(req);
        let Some(route) = self.table.lookup(&host) else {
            let body = page(
                "No such app",
                "There is no app at this address. Check the URL, or create the app with `skiff apps:create`.",
            );
            respond(session, 404, body, &ctx.request_id).await?;
            return Ok(true);
        };
        if route.backends.is_empty() {
            let body = page(
                "Application error",
                "This app has no web dynos running (H14). Deploy it, or scale it with `skiff ps:scale web=1`.",
            );
            tracing::warn!(target: "skiff::router", app = %route.app, code = "H14", "no web dynos running");
            if let Some(log) = &self.access_log {
                log.request(
                    &route.app,
                    &format!(
                        "at=error code=H14 desc=\"No web processes running\" method={} path=\"{}\" host={} request_id={} dyno=none status=503",
                        req.method,
                        req.uri.path(),
                        route.app,
                        ctx.request_id,
                    ),
                );
            }
            respond(session, 503, body, &ctx.request_id).await?;
            return Ok(true);
        }
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let backend =
            ctx.route.as_ref().and_then(|r| r.pick()).ok_or_else(|| {
                Error::explain(pingora_error::ErrorType::ConnectNoRoute, "no dyno")
            })?;
        ctx.dyno = Some(backend.dyno.clone());
        Ok(Box::new(HttpPeer::new(backend.addr, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let forwarded_for = match upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {client_ip}"),
            _ => client_ip,
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        upstream.insert_header("x-forwarded-for", forwarded_for)?;
        upstream.insert_header("x-forwarded-proto", "http")?;
        upstream.insert_header("x-forwarded-port", self.port.to_string())?;
        upstream.insert_header("x-request-start", now_ms.to_string())?;
        upstream.insert_header("x-request-id", ctx.request_id.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.request_id.clone())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, body) = match e.esource() {
            ErrorSource::Upstream => (
                503,
                page(
                    "Application error",
                    "The app did not answer this request. Its logs say why (H13).",
                ),
            ),
            ErrorSource::Downstream => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            _ => (
                500,
                page(
                    "Platform error",
                    "Skiff could not route this request (H99).",
                ),
            ),
        };
        if let Some(route) = &ctx.route {
            tracing::warn!(target: "skiff::router", app = %route.app, dyno = ctx.dyno.as_deref().unwrap_or(""), error = %e, "request failed");
        }
        let _ = respond(session, code, body, &ctx.request_id).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let app = ctx.route.as_ref().map(|r| r.app.as_str()).unwrap_or("");
        let line = format!(
            "at=info method={} path=\"{}\" host={} request_id={} dyno={} service={}ms status={} bytes={}",
            req.method,
            req.uri.path(),
            app,
            ctx.request_id,
            ctx.dyno.as_deref().unwrap_or("none"),
            ctx.started.elapsed().as_millis(),
            status,
            session.body_bytes_sent(),
        );
        tracing::info!(target: "skiff::router", "{line}");
        // Requests for unknown hosts belong to no app, so only routed ones reach its logs.
        if let (Some(log), Some(route)) = (&self.access_log, &ctx.route) {
            log.request(&route.app, &line);
        }
    }
}

/// Keeps a client's `X-Request-Id` when it is sane, else makes one.
fn request_id(req: &RequestHeader) -> String {
    if let Some(id) = req
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        let ok = (20..=200).contains(&id.len())
            && id.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'=' | b'/')
            });
        if ok {
            return id.to_owned();
        }
    }
    new_request_id()
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    // A failed read leaves zeros; ids are for correlation, not security.
    let _ = getrandom::fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

async fn respond(session: &mut Session, status: u16, body: String, request_id: &str) -> Result<()> {
    let body = Bytes::from(body);
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", "text/html; charset=utf-8")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-cache, no-store")?;
    header.insert_header("x-request-id", request_id.to_owned())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

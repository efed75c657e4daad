//! The Pingora service: Host -> app -> dyno, Heroku's forwarding headers, and the router's own
//! error pages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{TcpSocketOptions, TlsAccept};
use pingora_core::protocols::Digest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::sync::watch;

use crate::RouterError;
use crate::guard::{ClientWatch, ConnectionLimits, EverySecond, Guarded, TlsPort, each_second};
use crate::pages::{Code, page};
use crate::table::{AppRoute, AppSettings, InFlight, RouteTable, normalize};
use crate::tls::SniResolver;

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
    /// The HTTPS listen address (HTTP/2 and HTTP/1.1 by ALPN), if any.
    pub https_listen: Option<SocketAddr>,
    /// Worker threads for the router's own runtime.
    pub threads: usize,
    /// A private folder for Pingora's pid and upgrade socket files.
    pub run_dir: PathBuf,
    /// Gets every routed request's line (the app's `router` logs), besides `tracing`.
    pub access_log: Option<Arc<dyn AccessLog>>,
    /// The receive buffer of each client connection, in bytes (`None`:
    /// the kernel's autotuning). It bounds how much of a request body a client can push that
    /// nobody reads: an app that answers before reading its upload leaves the router's kernel
    /// to receive and free it all.
    pub client_recv_buffer: Option<usize>,
    /// How long a client has to send a request's head, from its first byte
    /// ([`DEFAULT_HEAD_TIMEOUT`]). Pingora alone only bounds the silence between two reads.
    pub head_timeout: Duration,
    /// The most client connections open at once (`None`: no cap but the process's file
    /// descriptor limit). Beyond it, new connections get a 503 and are closed.
    pub max_connections: Option<usize>,
    /// The most connections open at once from one client address (an IPv6 /64 counts as
    /// one), so one client cannot take them all (`None`: no such cap, for a router behind a
    /// load balancer, where every client has the balancer's address).
    pub max_connections_per_client: Option<usize>,
}

/// A request head's time limit unless the platform says otherwise: a head is a few KiB, and
/// Heroku's router gives the whole exchange 30 s to start answering.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field("listen", &self.listen)
            .field("https_listen", &self.https_listen)
            .field("threads", &self.threads)
            .field("run_dir", &self.run_dir)
            .field("access_log", &self.access_log.is_some())
            .field("client_recv_buffer", &self.client_recv_buffer)
            .field("head_timeout", &self.head_timeout)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .finish()
    }
}

/// A running router; [`RouterHandle::shutdown`] stops it and waits for its thread.
pub struct RouterHandle {
    stop: watch::Sender<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Client connections open now.
    open: Arc<AtomicUsize>,
    /// Whether the listeners have closed (after a drain).
    closed: Arc<AtomicBool>,
    /// Set when a drain begins.
    draining: Arc<AtomicBool>,
    /// The listen ports' reservations (see [`spawn_router`]), released after the router stops.
    _reserved: Vec<tokio::net::TcpSocket>,
    /// The addresses the router listens on, HTTP first.
    addrs: Vec<SocketAddr>,
}

impl RouterHandle {
    /// Waits until the router accepts connections on each of its addresses. Pingora binds on
    /// its own thread and reports a listener that fails to start (an HTTPS listener without
    /// TLS settings, a bind error other than a taken port) only in its log, while the process
    /// runs on without it: a platform that calls this first fails with the address instead.
    pub fn wait_listening(&self, timeout: Duration) -> Result<(), RouterError> {
        let deadline = Instant::now() + timeout;
        for &addr in &self.addrs {
            // The reservation never listens, so a listening socket at the address is Pingora's.
            while !listens_on(addr) {
                if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                    return Err(RouterError::Stopped { addr });
                }
                if Instant::now() >= deadline {
                    return Err(RouterError::NotListening { addr, timeout });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// Stops taking connections and lets the open ones finish: the listeners close, idle
    /// kept-alive connections are closed, and each request in flight gets its answer, after
    /// which its connection closes. [`RouterHandle::open_connections`] tells when they are done.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stop.send_if_modified(|stop| {
            let changed = *stop == Stop::Run;
            if changed {
                *stop = Stop::Drain;
            }
            changed
        });
    }

    /// Client connections open now (idle kept-alive ones too).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether a [`RouterHandle::drain`] is over: the listeners have closed (so no connection
    /// comes in any more) and every open connection has ended.
    pub fn drained(&self) -> bool {
        self.closed.load(Ordering::Acquire) && self.open_connections() == 0
    }

    /// Stops the router: at once, or after a [`RouterHandle::drain`], whatever is still open.
    /// Joins its thread unless it was drained, when Pingora's thread sits out a fixed grace
    /// period that the process need not wait for.
    pub fn shutdown(mut self) {
        let drained = *self.stop.borrow() == Stop::Drain;
        let _ = self.stop.send(Stop::Now);
        if let Some(t) = self.thread.take()
            && !drained
        {
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
    // Pingora binds later, on its own thread, and on a taken port it retries for 30 s and then
    // gives up on that thread alone: the process would run on without a router while whoever
    // took the port answers on it. So each port is checked here, where a taken one is a clear
    // error, and then stays reserved until Pingora listens on it: a socket bound with
    // SO_REUSEPORT that never listens, which Pingora's listeners join through the same flag,
    // and which a socket without it (every other program's) cannot bind beside.
    let addrs: Vec<SocketAddr> = std::iter::once(config.listen)
        .chain(config.https_listen)
        .collect();
    let mut reserved = Vec::new();
    for &addr in &addrs {
        let taken = |source| RouterError::Bind { addr, source };
        // A plain bind first: it fails on a port held by anyone, SO_REUSEPORT or not (another
        // router, say), which the reservation alone would share.
        std::net::TcpListener::bind(addr).map_err(taken)?;
        reserved.push(reserve(addr).map_err(taken)?);
    }
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let flags = Flags {
        open: open.clone(),
        closed: closed.clone(),
        draining: draining.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("skiff-router".into())
        .spawn(move || run(config, table, stop_rx, flags))
        .map_err(RouterError::Thread)?;
    Ok(RouterHandle {
        stop,
        thread: Some(thread),
        open,
        closed,
        draining,
        _reserved: reserved,
        addrs,
    })
}

/// Whether a TCP socket listens on `addr` (its address and port, so another program
/// listening on the same port at another address does not count), from the kernel's socket
/// tables. Unlike a probe connection, looking leaves nothing in the router's log, where an
/// HTTPS listener reports every handshake that ends early. Where the tables cannot be read, a
/// connection tells.
fn listens_on(addr: SocketAddr) -> bool {
    /// `st` of a listening socket in /proc/net/tcp.
    const LISTEN: &str = "0A";
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        let listening = text.lines().skip(1).any(|line| {
            // sl, local_address, rem_address, st, ...
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            state == Some(LISTEN)
                && local
                    .and_then(proc_socket_addr)
                    .is_some_and(|a| a.ip() == addr.ip().to_canonical() && a.port() == addr.port())
        });
        if listening {
            return true;
        }
    }
    if read_any {
        return false;
    }
    let probe = match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
    };
    std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
}

/// A socket address as /proc/net/tcp{,6} prints it: the address as 32-bit words in hex, each
/// in the machine's byte order (`0100007F` is 127.0.0.1 on x86), then `:` and the port in hex.
fn proc_socket_addr(text: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    if !ip_hex.is_ascii() || ip_hex.len() % 8 != 0 {
        return None;
    }
    let mut octets = Vec::with_capacity(16);
    for i in (0..ip_hex.len()).step_by(8) {
        let word = u32::from_str_radix(&ip_hex[i..i + 8], 16).ok()?;
        octets.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match octets.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(octets).ok()?),
        // A v4-mapped address is the IPv4 one, as a dual-stack socket serves it.
        16 => IpAddr::from(<[u8; 16]>::try_from(octets).ok()?).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A socket bound to `addr` with SO_REUSEPORT, not listening: connections go to the
/// listeners that share the port, never to it.
fn reserve(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

fn run(
    config: RouterConfig,
    table: Arc<RouteTable>,
    stop: watch::Receiver<Stop>,
    Flags {
        open,
        closed,
        draining,
    }: Flags,
) {
    let conf = ServerConf {
        threads: config.threads.max(1),
        // After a drain the platform decides when to stop (see `RouterHandle::drain`); the
        // grace period just keeps Pingora from cutting off connections before then.
        grace_period_seconds: Some(DRAIN_GRACE_SECS),
        graceful_shutdown_timeout_seconds: Some(0),
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
    let mut proxy = pingora_proxy::http_proxy(
        &server.configuration,
        Router {
            table: table.clone(),
            port: config.listen.port(),
            https_port: config.https_listen.map(|a| a.port()),
            access_log: config.access_log.clone(),
            draining,
        },
    );
    // An HTTP/2 connection with no stream open is closed after the default client timeout,
    // the limit a kept-alive HTTP/1 connection has between requests; the h2 library would
    // keep it for good. (Pingora starts that clock when the last stream hands its answer to
    // h2, which may still be sending its tail: see SECURITY.md.)
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(AppSettings::default().client_timeout);
    // Refused in `request_filter`, with the router's page (see there).
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    let mut guarded = Guarded::new(
        proxy,
        ConnectionLimits {
            head_timeout: config.head_timeout,
            max_connections: config.max_connections,
            max_per_client: config.max_connections_per_client,
        },
        open,
        closed,
    );
    // The HTTPS port listens as plain TCP: the guard does the handshakes, under its caps and
    // deadline (Pingora's TLS listener would give each 60 s, uncounted).
    let https = config
        .https_listen
        .and_then(|addr| match tls_settings(table.clone()) {
            Ok(settings) => Some((addr, settings.build())),
            Err(e) => {
                tracing::error!(error = %e, "HTTPS listener not started");
                None
            }
        });
    let https_listen = https.as_ref().map(|(addr, _)| *addr);
    if let Some((addr, acceptor)) = https {
        guarded = guarded.with_tls(TlsPort { addr, acceptor });
    }
    let mut service = Service::new("skiff-router".to_owned(), guarded);
    let mut socket = TcpSocketOptions::default();
    socket.tcp_recv_buf = config.client_recv_buffer;
    // Joins the port's reservation (see `spawn_router`).
    socket.so_reuseport = Some(true);
    service.add_tcp_with_settings(&config.listen.to_string(), socket.clone());
    if let Some(addr) = https_listen {
        service.add_tcp_with_settings(&addr.to_string(), socket);
    }
    server.add_service(service);
    tracing::info!(
        listen = %config.listen,
        https = ?config.https_listen,
        head_timeout = ?config.head_timeout,
        max_connections = ?config.max_connections,
        max_connections_per_client = ?config.max_connections_per_client,
        "router up"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(StopWatch(stop)),
    });
    tracing::info!("router stopped");
}

/// HTTP/2 and HTTP/1.1 by ALPN, the certificate chosen per handshake by SNI.
fn tls_settings(table: Arc<RouteTable>) -> Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(KeepSni))?;
    settings.set_cert_resolver(Arc::new(SniResolver(table)));
    settings.enable_h2();
    Ok(settings)
}

/// Keeps the name the client asked for in the handshake (SNI) with the connection, for
/// [`Router::misdirected`]; the resolver chose the certificate by it.
struct KeepSni;

/// The SNI of a TLS connection, in the session's TLS digest.
struct Sni(String);

#[async_trait]
impl TlsAccept for KeepSni {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let name = tls.server_name()?;
        Some(Arc::new(Sni(name.to_owned())))
    }
}

/// What the router's thread shares with its handle.
struct Flags {
    /// Client connections open now.
    open: Arc<AtomicUsize>,
    /// Set once the listeners have closed.
    closed: Arc<AtomicBool>,
    /// Set when a drain begins.
    draining: Arc<AtomicBool>,
}

/// What the platform has asked of the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// Finish what is open, take nothing new.
    Drain,
    Now,
}

/// Longer than any drain the platform waits for: the process ends before Pingora's thread
/// wakes.
const DRAIN_GRACE_SECS: u64 = 24 * 3600;

/// Lets the platform, not Unix signals, decide when the router stops.
struct StopWatch(watch::Receiver<Stop>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        match rx.wait_for(|stop| *stop != Stop::Run).await.map(|s| *s) {
            Ok(Stop::Drain) => ShutdownSignal::GracefulTerminate,
            _ => ShutdownSignal::FastShutdown,
        }
    }
}

struct Router {
    table: Arc<RouteTable>,
    port: u16,
    https_port: Option<u16>,
    access_log: Option<Arc<dyn AccessLog>>,
    /// Set when a drain begins: answers from then on close their connection.
    draining: Arc<AtomicBool>,
}

/// The cookie that pins a client to a dyno when the app enables session affinity.
const AFFINITY_COOKIE: &str = "skiff-session-affinity";

/// How a request ended when it did not end with the app's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A router error code; the page goes out when nothing has been sent yet.
    Code(Code),
    /// The request body is over the app's limit.
    TooLarge,
    /// No app at this host.
    NoApp,
    /// A TLS connection made for one app's host, asked for another app's (421).
    Misdirected,
    /// A request the router refuses to pass on (bad framing, headers over the limits).
    Malformed,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    host: String,
    route: Option<Arc<AppRoute>>,
    /// Kept as a header value: it goes out on the upstream request and on the response.
    request_id: HeaderValue,
    websocket: bool,
    /// The affinity id the client's cookie names.
    pinned: Option<String>,
    /// The dyno chosen last.
    dyno: Option<String>,
    addr: Option<SocketAddr>,
    slot_id: Option<String>,
    /// Dynos that refused the connection.
    tried: Vec<SocketAddr>,
    admitted: Option<InFlight>,
    on_dyno: Option<InFlight>,
    connect_started: Option<Instant>,
    connected_at: Option<Instant>,
    connect_ms: u128,
    body_bytes: u64,
    failure: Option<Failure>,
    /// Status written by the router itself when the client could not get it.
    status: u16,
}

impl Router {
    /// How long to hold a body chunk back to keep its app within its share of the router.
    fn bandwidth_wait(&self, body: &Option<Bytes>, ctx: &RequestCtx) -> Option<Duration> {
        let bytes = body.as_ref().map_or(0, Bytes::len);
        let route = ctx.route.as_ref()?;
        route.bandwidth.take(bytes, self.table.app_bandwidth())
    }

    /// Holds a request while the app's first web dynos start: the route once one is up or the
    /// platform stopped starting them (then H14 or H10 follow as usual), `None` after `limit`.
    async fn wait_for_boot(&self, host: &str, limit: Duration) -> Option<Arc<AppRoute>> {
        let deadline = Instant::now() + limit;
        loop {
            let route = self.table.lookup(host)?;
            if !route.slots.is_empty() || !route.booting() {
                return Some(route);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether the request came on a TLS connection made for another app's host, with a
    /// certificate that is not the one this host would get: an app's certificate covers only
    /// its own app's hosts, so such a connection speaks for no other app (RFC 9110 section
    /// 15.5.20). A client that reuses it for one, or names one host in the handshake and
    /// another in the request, gets 421 and connects again. The platform's certificate for
    /// every app's default host serves all those with none of their own, so a connection
    /// made with it may carry requests for any of them.
    fn misdirected(&self, session: &Session, host: &str, route: &AppRoute) -> bool {
        let Some(Sni(name)) = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|tls| tls.extension.get::<Sni>())
        else {
            return false;
        };
        let owner = self.table.owner(name);
        if owner.as_deref() == Some(route.app.as_str()) {
            return false;
        }
        let certs = self.table.certs();
        match (
            certs.lookup(name, owner.as_deref()),
            certs.lookup(&normalize(host), Some(&route.app)),
        ) {
            // The same certificate may be stored twice (added to two apps).
            (Some(presented), Some(due)) => presented.cert != due.cert,
            _ => true,
        }
    }

    /// `("https", 443-ish)` for requests that came over the TLS listener, else plain HTTP's.
    fn scheme(&self, session: &Session) -> (&'static str, u16) {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        match (tls, self.https_port) {
            (true, Some(port)) => ("https", port),
            _ => ("http", self.port),
        }
    }
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            host: String::new(),
            route: None,
            request_id: HeaderValue::from_static(""),
            websocket: false,
            pinned: None,
            dyno: None,
            addr: None,
            slot_id: None,
            tried: Vec::new(),
            admitted: None,
            on_dyno: None,
            connect_started: None,
            connected_at: None,
            connect_ms: 0,
            body_bytes: 0,
            failure: None,
            status: 0,
        }
    }

    /// The first hook a parsed head reaches: from here on, what Pingora reads is its body, and
    /// what it writes is the router's answer (see [`ClientWatch`]).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(watch) = session.stream().and_then(ClientWatch::of) {
            watch.head_read();
        }
        // A client may send its next request before this one's answer (RFC 9112 section
        // 9.3.2). Without this, Pingora takes those bytes for a client misbehaving, and
        // aborts the request in flight (H18) or drops the next one.
        session.set_pipelining_enabled(true);
        // The router's own pages (an unknown host, H11, 413...) go out before any app is
        // known: an HTTP/2 client granting no window would hold each such stream, and its
        // memory, for good. The app's own client timeout replaces this one once known.
        session.set_write_timeout(Some(AppSettings::default().client_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Pingora waits for a kept-alive connection's next request forever: idle clients would
        // pile up, each holding a file descriptor the API, git and dynos share. The default
        // client timeout bounds the wait until the app's own is known, and for requests that
        // never reach an app (an unknown host, a refusal).
        if self.draining.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(AppSettings::default().client_timeout.as_secs()));
        }
        let req = session.req_header();
        ctx.request_id = request_id(req);
        // Pingora passes CONNECT on only so that the router answers it with its own page, as
        // it does every refusal (over HTTP/2 Pingora's answer could not be swapped for it).
        // An HTTP/1 connection is closed after it, so nothing after its head is read as a
        // request; over HTTP/2 the stream ends with the answer.
        if req.method == http::Method::CONNECT {
            ctx.failure = Some(Failure::Malformed);
            session.set_keepalive(None);
            let body = page("Method not allowed", "This method is not supported here.");
            respond(session, 405, body, ctx).await?;
            return Ok(true);
        }
        // HTTP/2 names the host in `:authority`, which Pingora puts in the URI. An HTTP/1
        // absolute-form target names it too, and wins over `Host` (Pingora has refused one
        // whose `Host` disagrees), but Pingora keeps that only in the raw target.
        ctx.host = req
            .uri
            .host()
            .map(str::to_owned)
            .or_else(|| absolute_authority(req.raw_path()).map(str::to_owned))
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if let Some((status, why)) = malformed(req) {
            ctx.failure = Some(Failure::Malformed);
            // What follows a request the router could not frame cannot be trusted either.
            session.set_keepalive(None);
            respond(session, status, page("Bad request", why), ctx).await?;
            return Ok(true);
        }
        ctx.websocket = is_websocket(req);
        let declared_len = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let Some(route) = self.table.lookup(&ctx.host) else {
            let body = page(
                "No such app",
                "There is no app at this address. Check the URL, or create the app with `skiff apps:create`.",
            );
            ctx.failure = Some(Failure::NoApp);
            respond(session, 404, body, ctx).await?;
            return Ok(true);
        };
        if self.misdirected(session, &ctx.host, &route) {
            ctx.failure = Some(Failure::Misdirected);
            let body = page(
                "Misdirected request",
                "This connection was made for another address and cannot serve this one. Connect to this address itself.",
            );
            session.set_keepalive(None);
            respond(session, 421, body, ctx).await?;
            return Ok(true);
        }
        ctx.route = Some(route.clone());
        if route.settings.maintenance {
            return refuse(session, ctx, Code::H80).await;
        }
        let route = if route.slots.is_empty() && route.booting() {
            match self
                .wait_for_boot(&ctx.host, route.settings.boot_timeout)
                .await
            {
                Some(r) => r,
                None => return refuse(session, ctx, Code::H20).await,
            }
        } else {
            route
        };
        ctx.route = Some(route.clone());
        if route.slots.is_empty() {
            return refuse(session, ctx, Code::H14).await;
        }
        if declared_len.is_some_and(|n| n > route.settings.max_body_bytes) {
            ctx.failure = Some(Failure::TooLarge);
            respond(session, 413, too_large_page(&route), ctx).await?;
            return Ok(true);
        }
        let Some(admitted) = route.admit() else {
            return refuse(session, ctx, Code::H11).await;
        };
        ctx.admitted = Some(admitted);
        // A client that stops sending its body must not hold a dyno (slow loris).
        session.set_read_timeout(Some(route.settings.client_timeout));
        // Nor one that stops reading its response: each write to it must progress in time.
        // Pingora's timeout bounds body writes; the watch bounds every write to the client's
        // connection, heads and flushes too (an HTTP/2 connection's at the default: its
        // streams may reach several apps, and no stream reaches the connection's watch).
        session.set_write_timeout(Some(route.settings.client_timeout));
        if let Some(watch) = session.stream().and_then(ClientWatch::of) {
            watch.set_write_limit(route.settings.client_timeout);
        }
        // Nor one that keeps its connection open and sends nothing more (see the default set
        // at the top): the app's own client timeout.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(route.settings.client_timeout.as_secs().max(1)));
        }
        if route.settings.session_affinity {
            ctx.pinned = cookie(session.req_header(), AFFINITY_COOKIE);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(mut route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "no route"));
        };
        if !ctx.tried.is_empty() {
            // A retry sees the routes as they are now: a deploy may have just switched them.
            if let Some(fresh) = self.table.route(&route.app) {
                route = fresh;
                ctx.route = Some(route.clone());
            }
        }
        let slot = route
            .pick(&ctx.tried, ctx.pinned.as_deref())
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no dyno left to try"))?;
        ctx.dyno = Some(slot.backend.dyno.clone());
        ctx.addr = Some(slot.backend.addr);
        ctx.slot_id = Some(slot.id.clone());
        ctx.on_dyno = Some(slot.track());
        ctx.connect_started = Some(Instant::now());
        let mut peer = HttpPeer::new(slot.backend.addr, false, String::new());
        peer.group_key = slot.generation;
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(route.settings.timeout);
        peer.options.write_timeout = Some(route.settings.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = ctx.addr.take() {
            ctx.tried.push(addr);
        }
        ctx.on_dyno = None;
        // Nothing reached the dyno, so one more try elsewhere is safe; more would only pile
        // up on an app whose dynos are all down.
        e.set_retry(ctx.tried.len() < 2);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The request may have reached the app: it is never sent twice.
        e.set_retry(false);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let now = Instant::now();
        ctx.connect_ms = ctx
            .connect_started
            .map(|t| now.duration_since(t).as_millis())
            .unwrap_or_default();
        ctx.connected_at = Some(now);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Chunked bodies declare no length, so the limit is also checked as they stream.
        ctx.body_bytes += body.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        let limit = ctx
            .route
            .as_ref()
            .map(|r| r.settings.max_body_bytes)
            .unwrap_or(u64::MAX);
        if ctx.body_bytes > limit {
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over the limit",
            ));
        }
        if let Some(wait) = self.bandwidth_wait(body, ctx) {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // The dyno is done with the request once its whole answer is in: its place in the
        // app's and the dyno's bounds goes back now, not when a slow (or unwilling) client
        // has read the answer, or one client could hold an app's every place by reading
        // nothing (an HTTP/2 client needs one connection for that).
        if end_of_stream {
            ctx.on_dyno = None;
            ctx.admitted = None;
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        Ok(self.bandwidth_wait(body, ctx))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in hop_by_hop(&upstream.headers, ctx.websocket) {
            upstream.remove_header(&name);
        }
        if ctx.websocket {
            upstream.insert_header("connection", "upgrade")?;
        }
        let client_ip = ClientIp(session);
        let forwarded_for = match joined(&upstream.headers, "x-forwarded-for") {
            Some(prior) => format!("{prior}, {client_ip}"),
            None => client_ip.to_string(),
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        upstream.insert_header("x-forwarded-for", forwarded_for)?;
        let (proto, port) = self.scheme(session);
        upstream.insert_header("x-forwarded-proto", proto)?;
        upstream.insert_header("x-forwarded-port", HeaderValue::from(port))?;
        upstream.insert_header("x-request-start", now_ms.to_string())?;
        upstream.insert_header("x-request-id", ctx.request_id.clone())?;
        upstream.insert_header("via", via(&upstream.headers))?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.draining.load(Ordering::Relaxed) {
            // Pingora would say `keep-alive` and then close anyway: say what happens.
            session.set_keepalive(None);
        }
        let upgraded = ctx.websocket && upstream_response.status.as_u16() == 101;
        for name in hop_by_hop(&upstream_response.headers, upgraded) {
            upstream_response.remove_header(&name);
        }
        // An HTTP/1.0 client knows no chunks (RFC 9112 section 6.1): a body of unknown length
        // goes to it unframed, and the connection's end marks the body's.
        let bodiless = session.req_header().method == http::Method::HEAD
            || matches!(upstream_response.status.as_u16(), 204 | 304);
        if session.req_header().version == http::Version::HTTP_10
            && !bodiless
            && upstream_response
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
        {
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        if upgraded {
            upstream_response.insert_header("connection", "upgrade")?;
        }
        let via = via(&upstream_response.headers);
        upstream_response.insert_header("via", via)?;
        upstream_response.insert_header("x-request-id", ctx.request_id.clone())?;
        let affinity = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.settings.session_affinity);
        if affinity
            && let Some(id) = &ctx.slot_id
            && ctx.pinned.as_ref() != Some(id)
        {
            upstream_response.append_header(
                "set-cookie",
                format!("{AFFINITY_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"),
            )?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = classify(e);
        ctx.failure = Some(failure);
        if let Some(route) = &ctx.route {
            let dyno = ctx.dyno.as_deref().unwrap_or("");
            // A client that hangs up or sends a bad body is routine; the app's router line
            // records it either way.
            if matches!(
                failure,
                Failure::Code(Code::H18) | Failure::Malformed | Failure::TooLarge
            ) {
                tracing::debug!(target: "skiff::router", app = %route.app, dyno, error = %e, "request failed on the client's side");
            } else {
                tracing::warn!(target: "skiff::router", app = %route.app, dyno, error = %e, "request failed");
            }
        }
        let (status, body) = match failure {
            Failure::TooLarge => (413, ctx.route.as_ref().map(|r| too_large_page(r))),
            Failure::Code(Code::H18) => {
                // A client that went quiet may still read an answer; one that left cannot.
                let timed_out = matches!(e.etype(), ErrorType::ReadTimedout);
                if timed_out {
                    (408, Some(Code::H18.page()))
                } else {
                    (499, None)
                }
            }
            Failure::Code(code) => (503, Some(code.page())),
            Failure::NoApp => (404, None),
            Failure::Misdirected => (421, None),
            Failure::Malformed => (
                400,
                Some(page(
                    "Bad request",
                    "The request is malformed (its body's framing, or a header the router must keep).",
                )),
            ),
        };
        ctx.status = status;
        // The connection is not reused after a failure; saying so lets the client know
        // before it sends another request on it.
        session.set_keepalive(None);
        if let Some(body) = body
            && session.response_written().is_none()
        {
            let _ = respond(session, status, body, ctx).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Pingora puts this in its log lines about a request (a retried connection, a failure):
    /// the path and host cut short as in the router's own line.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        format!(
            "{} {}, Host: {}",
            clipped(req.method.as_str(), LOGGED_METHOD_MAX),
            clipped(path, LOGGED_PATH_MAX),
            clipped(host, LOGGED_HOST_MAX)
        )
    }

    /// Pingora logs every failed request at ERROR. A request of a known app was logged by
    /// `fail_to_proxy` already, and one the client broke off or got wrong is the client's
    /// business, which the app's router line records: logging those again at ERROR would bury
    /// the platform's real errors under every client that hangs up.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        // The router's own failures (H99) stay at ERROR.
        (ctx.route.is_some() && ctx.failure != Some(Failure::Code(Code::H99)))
            || matches!(
                ctx.failure,
                Some(
                    Failure::Code(Code::H18)
                        | Failure::Malformed
                        | Failure::TooLarge
                        | Failure::NoApp
                        | Failure::Misdirected
                )
            )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // Held until the dyno's answer is in (`upstream_response_body_filter`), or until here
        // when it never came whole, so the request counts against its app and dyno meanwhile.
        ctx.on_dyno = None;
        ctx.admitted = None;
        // Pingora reuses a connection after this, draining what is left of the request body
        // first: those bytes would count as the next head's. Not reused then.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        if let Some(watch) = session.stream().and_then(ClientWatch::of) {
            watch.request_done();
        }
        let req = session.req_header();
        let status = match session.response_written() {
            Some(r) if ctx.status == 0 || r.status.as_u16() == ctx.status => r.status.as_u16(),
            _ => ctx.status,
        };
        let code = match ctx.failure {
            Some(Failure::Code(code)) => Some(code),
            _ => None,
        };
        let at = match code {
            Some(Code::H80) | None => "info",
            Some(_) => "error",
        };
        let code = code.map(|c| format!(" code={} desc=\"{}\"", c.as_str(), c.desc()));
        let code = code.as_deref().unwrap_or("");
        let total = ctx.started.elapsed().as_millis();
        let service = ctx
            .connected_at
            .map(|t| t.elapsed().as_millis())
            .unwrap_or_default();
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        // What the client chose is cut short, so that one request's line stays one line of
        // ordinary size, whole to its last field, in the app's log and the platform's.
        let line = format!(
            "at={at}{code} method={} path=\"{}\" host={} request_id={} fwd=\"{}\" dyno={} connect={}ms service={}ms status={} bytes={} protocol={}",
            clipped(req.method.as_str(), LOGGED_METHOD_MAX),
            Quoted(&clipped(path, LOGGED_PATH_MAX)),
            Token(&clipped(&normalize(&ctx.host), LOGGED_HOST_MAX)),
            ctx.request_id.to_str().unwrap_or(""),
            ClientIp(session),
            ctx.dyno.as_deref().unwrap_or("none"),
            ctx.connect_ms,
            service,
            status,
            session.body_bytes_sent(),
            self.scheme(session).0,
        );
        tracing::info!(target: "skiff::router", total_ms = total as u64, "{line}");
        // Requests for unknown hosts belong to no app, so only routed ones reach its logs.
        if let (Some(log), Some(route)) = (&self.access_log, &ctx.route) {
            log.request(&route.app, &line);
        }
    }
}

const VIA: &str = "1.1 skiff";

/// `Via` with Skiff's hop appended to what earlier hops said.
fn via(headers: &http::HeaderMap) -> HeaderValue {
    match joined(headers, "via") {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {VIA}"))
            .unwrap_or(HeaderValue::from_static(VIA)),
        None => HeaderValue::from_static(VIA),
    }
}

/// The platform log's line for refused requests, once a second at most.
static REFUSAL_LOG: EverySecond = EverySecond::new();

async fn refuse(session: &mut Session, ctx: &mut RequestCtx, code: Code) -> Result<bool> {
    // A flood of requests at a full app must not become a flood of these: the app's own
    // router lines count each.
    if let Some(route) = &ctx.route {
        each_second!(REFUSAL_LOG, tracing::Level::WARN, app = %route.app, code = code.as_str(), "{}", code.desc());
    }
    ctx.failure = Some(Failure::Code(code));
    respond(session, 503, code.page(), ctx).await?;
    Ok(true)
}

fn too_large_page(route: &AppRoute) -> String {
    page(
        "Request too large",
        &format!(
            "This app accepts request bodies of at most {} bytes.",
            route.settings.max_body_bytes
        ),
    )
}

/// Most header bytes a request may carry, request line included; Heroku's router allows 8 KiB
/// per line, and a total bound keeps a flood of legal lines from holding memory.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest single header line.
const MAX_HEADER_LINE: usize = 8 * 1024;
/// Most header lines a request may carry. A dyno reads up to 100, and the router adds six of
/// its own (`X-Forwarded-*`, `X-Request-Start`, `X-Request-Id`, `Via`): past this the app
/// would refuse the request with a bare answer instead of the router with its page.
const MAX_HEADER_COUNT: usize = 90;

/// Why a request must not be proxied, as the status and sentence its page gets. Requests that
/// two HTTP parsers could frame differently are refused, so a dyno's server can never read a
/// second, smuggled request out of one body.
fn malformed(req: &RequestHeader) -> Option<(u16, &'static str)> {
    let headers = &req.headers;
    let te = headers.get_all(http::header::TRANSFER_ENCODING);
    // With both framings present, Pingora has already dropped Content-Length and will close
    // the connection after this request, as RFC 9112 asks.
    if te.iter().next().is_some() {
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        if codings != ["chunked"] {
            return Some((
                400,
                "Transfer-Encoding other than a single `chunked` is not accepted.",
            ));
        }
    }
    // RFC 9110 lets a recipient take `5, 5` as 5, but the dyno's parser refuses it, and a
    // list is how two framings hide in one header: one number or nothing.
    if headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Some((400, "Content-Length must be a single number."));
    }
    // A path (origin form), a whole URL (absolute form) or `OPTIONS *`: anything else (`GET
    // json`, an authority alone) no app can be asked about.
    // Pingora keeps a target that is not a path as it came, for the wire.
    let target = req.raw_path();
    let target_ok = target.first() == Some(&b'/')
        || (target == b"*" && req.method == http::Method::OPTIONS)
        || absolute_authority(target).is_some();
    if !target_ok {
        return Some((
            400,
            "The request target must be a path (`/...`) or an absolute URL.",
        ));
    }
    if req.version == http::Version::HTTP_11
        && req.uri.host().is_none()
        && headers.get_all(http::header::HOST).iter().count() != 1
    {
        return Some((400, "An HTTP/1.1 request needs exactly one Host header."));
    }
    let mut total = req.method.as_str().len()
        + req.uri.authority().map_or(0, |a| a.as_str().len())
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    for (name, value) in headers {
        let line = name.as_str().len() + value.len() + 4;
        if line > MAX_HEADER_LINE {
            return Some((431, "A request header line is longer than 8 KiB."));
        }
        total += line;
    }
    if total > MAX_HEADER_BYTES {
        return Some((431, "The request's headers are larger than 64 KiB."));
    }
    if headers.len() > MAX_HEADER_COUNT {
        return Some((431, "A request may carry at most 90 header lines."));
    }
    None
}

/// The authority of an `http://` or `https://` absolute-form target, by the same reading
/// Pingora checks `Host` against.
fn absolute_authority(target: &[u8]) -> Option<&str> {
    match pingora_http::authority::raw_target_authority(target) {
        pingora_http::authority::RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https") => {
            std::str::from_utf8(authority).ok()
        }
        _ => None,
    }
}

/// Maps a proxying error to Heroku's codes.
fn classify(e: &Error) -> Failure {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(413) => return Failure::TooLarge,
        ConnectNoRoute => return Failure::Code(Code::H10),
        // What Pingora refuses in the client's request past its head (a chunk that is not
        // one, a `Connection` header naming what routing needs) is a bad request, not a
        // client that left.
        InvalidHTTPHeader | Custom("InvalidChunk" | "InvalidTrailerEnd")
            if e.esource() == &ErrorSource::Downstream =>
        {
            return Failure::Malformed;
        }
        _ => {}
    }
    match e.esource() {
        ErrorSource::Downstream => Failure::Code(Code::H18),
        ErrorSource::Upstream => Failure::Code(match e.etype() {
            ConnectTimedout | ConnectRefused | ConnectError | BindError | SocketError
            | ConnectProxyFailure => Code::H10,
            ReadTimedout | WriteTimedout => Code::H12,
            _ => Code::H13,
        }),
        _ => Failure::Code(Code::H99),
    }
}

/// Headers that describe one connection, not the message: never forwarded, either way.
/// `Upgrade` stays on a websocket handshake, which needs it end to end.
///
/// Lists only those present in `headers` (the fixed ones, those `Connection` names, and
/// `Proxy-*`), so a request carrying none costs no allocation.
fn hop_by_hop(headers: &http::HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut names = Vec::new();
    let fixed = [
        http::header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        http::header::TE,
        http::header::TRAILER,
    ];
    for name in fixed {
        if headers.contains_key(&name) {
            names.push(name);
        }
    }
    if !upgrade && headers.contains_key(http::header::UPGRADE) {
        names.push(http::header::UPGRADE);
    }
    for value in headers.get_all(http::header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) else {
                continue;
            };
            // A client may not use Connection to strip what framing or routing needs.
            let protected = name == http::header::HOST
                || name == http::header::CONTENT_LENGTH
                || name == http::header::TRANSFER_ENCODING
                || name == http::header::UPGRADE;
            if !protected && headers.contains_key(&name) && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in headers.keys() {
        if name.as_str().starts_with("proxy-") {
            names.push(name.clone());
        }
    }
    names
}

fn is_websocket(req: &RequestHeader) -> bool {
    let has = |name: http::header::HeaderName, want: &str| {
        req.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(want))
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// All values of a header joined as one list, if any is non-empty.
fn joined(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn cookie(req: &RequestHeader, name: &str) -> Option<String> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// The client's address, written straight into the log line or `X-Forwarded-For`.
struct ClientIp<'a>(&'a Session);

impl std::fmt::Display for ClientIp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.client_addr().and_then(|a| a.as_inet()) {
            Some(a) => a.ip().fmt(f),
            None => Ok(()),
        }
    }
}

/// The most of a request's path, host and method a router line shows, in bytes.
const LOGGED_PATH_MAX: usize = 2048;
const LOGGED_HOST_MAX: usize = 256;
const LOGGED_METHOD_MAX: usize = 32;

/// `text` cut to `max` bytes on a character boundary, marked with `...` where cut.
fn clipped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let head = skiff_core::text::prefix_within(text, max);
    if head.len() == text.len() {
        return text.into();
    }
    format!("{head}...").into()
}

/// A value for inside `"..."` in a log line, escaped as it is written.
struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"']) {
            // Both are one byte, so `i + 1` is the next character's start.
            f.write_str(&rest[..i])?;
            f.write_str("\\")?;
            f.write_str(&rest[i..i + 1])?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A value that must stay one token in a log line.
struct Token<'a>(&'a str);

impl std::fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some((i, c)) = rest
            .char_indices()
            .find(|&(_, c)| c.is_whitespace() || c == '"')
        {
            f.write_str(&rest[..i])?;
            f.write_str("_")?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Keeps a client's `X-Request-Id` when it is sane, else makes one.
fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(id) = req.headers.get("x-request-id") {
        let bytes = id.as_bytes();
        let ok = (20..=200).contains(&bytes.len())
            && bytes.iter().all(|&b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'=' | b'/')
            });
        if ok {
            return id.clone();
        }
    }
    HeaderValue::try_from(new_request_id()).unwrap_or(HeaderValue::from_static(""))
}

pub(crate) fn new_request_id() -> String {
    thread_local! {
        // Seeded once per thread from the OS; ids are for correlation, not security, and a
        // syscall per request is measurable at the router's request rates.
        static RNG: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    let next = || {
        RNG.with(|state| {
            // xorshift64*: fast, and plenty for ids nobody needs to be unguessable.
            let mut x = state.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            state.set(x);
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    id
}

/// Answers with one of the router's own pages; a page for an error code names the code in
/// `skiff-error` too, as a dyno's own error answers do, so clients can tell them apart from
/// the app's.
async fn respond(session: &mut Session, status: u16, body: String, ctx: &RequestCtx) -> Result<()> {
    let body = Bytes::from(body);
    let mut header = ResponseHeader::build(status, Some(6))?;
    header.insert_header("content-type", "text/html; charset=utf-8")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-cache, no-store")?;
    header.insert_header("x-request-id", ctx.request_id.clone())?;
    header.insert_header("via", VIA)?;
    if let Some(Failure::Code(code)) = ctx.failure {
        header.insert_header("skiff-error", code.as_str())?;
    }
    // Writing fails only when the client has gone: its doing (H18), not the platform's.
    let downstream = |mut e: Box<Error>| {
        e.as_down();
        e
    };
    session
        .write_response_header(Box::new(header), false)
        .await
        .map_err(downstream)?;
    session
        .write_response_body(Some(body), true)
        .await
        .map_err(downstream)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;

    use super::*;
    use crate::table::{AppSettings, Backend};

    #[test]
    fn clipped_cuts_on_a_character_boundary() {
        assert_eq!(clipped("/short", 8), "/short");
        assert_eq!(clipped("/abcdefgh", 4), "/abc...");
        // 'é' is two bytes: a cut inside it steps back before it.
        assert_eq!(clipped("/aé", 3), "/a...");
    }

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl AccessLog for Lines {
        fn request(&self, _app: &str, line: &str) {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.to_owned());
        }
    }

    impl Lines {
        /// The line for `id`, waiting a bounded time: it is written after the response.
        fn of(&self, id: &str) -> String {
            for _ in 0..100 {
                let found = self
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|l| l.contains(id))
                    .cloned();
                if let Some(l) = found {
                    return l;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("no line for {id}");
        }
    }

    fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    }

    /// Reads a request up to the end of its head (or until the peer stops sending).
    fn read_head(stream: &mut TcpStream) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen
    }

    /// A dyno stand-in: answers every request with `ok`, one request per connection.
    fn serve_ok() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                read_head(&mut stream);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nKeep-Alive: timeout=5\r\nX-Gone: 1\r\nConnection: x-gone\r\n\r\nok",
                );
            }
        });
        addr
    }

    /// A dyno stand-in that reads each request whole, then closes without answering; counts them.
    fn serve_hangup() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                if !read_head(&mut stream).is_empty() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        (addr, seen)
    }

    fn get(port: u16, id: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: a-app.localhost\r\nConnection: close\r\nX-Request-Id: {id}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    /// A dyno stand-in that answers every request with `size` bytes, one request per connection.
    fn serve_bulk(size: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                read_head(&mut stream);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&vec![b'x'; size]);
            }
        });
        addr
    }

    /// A router on a free port, up; its run dir, for the test to remove.
    fn start_router(
        table: &Arc<RouteTable>,
        access_log: Option<Arc<dyn AccessLog>>,
        client_recv_buffer: Option<usize>,
    ) -> (SocketAddr, RouterHandle, std::path::PathBuf) {
        let (listen, handle, run_dir) = spawn_for_test(table, access_log, client_recv_buffer);
        handle
            .wait_listening(Duration::from_secs(5))
            .expect("router listens");
        (listen, handle, run_dir)
    }

    /// A router on a free port, just spawned: Pingora may not listen yet.
    fn spawn_for_test(
        table: &Arc<RouteTable>,
        access_log: Option<Arc<dyn AccessLog>>,
        client_recv_buffer: Option<usize>,
    ) -> (SocketAddr, RouterHandle, std::path::PathBuf) {
        spawn_configured(table, |c| {
            c.access_log = access_log;
            c.client_recv_buffer = client_recv_buffer;
        })
    }

    /// A router on a free port with the test's settings, just spawned.
    fn spawn_configured(
        table: &Arc<RouteTable>,
        configure: impl FnOnce(&mut RouterConfig),
    ) -> (SocketAddr, RouterHandle, std::path::PathBuf) {
        let listen = free_addr();
        let run_dir = std::env::temp_dir().join(format!("skiff-router-test-{}", listen.port()));
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let mut config = RouterConfig {
            listen,
            https_listen: None,
            threads: 1,
            run_dir: run_dir.clone(),
            access_log: None,
            client_recv_buffer: None,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            max_connections: None,
            max_connections_per_client: None,
        };
        configure(&mut config);
        let handle = spawn_router(config, table.clone()).expect("router");
        (listen, handle, run_dir)
    }

    /// A router on a free port with the test's settings, up.
    fn start_configured(
        table: &Arc<RouteTable>,
        configure: impl FnOnce(&mut RouterConfig),
    ) -> (SocketAddr, RouterHandle, std::path::PathBuf) {
        let (listen, handle, run_dir) = spawn_configured(table, configure);
        handle
            .wait_listening(Duration::from_secs(5))
            .expect("router listens");
        (listen, handle, run_dir)
    }

    /// A client connection that waits up to 20 s for each read.
    fn client(listen: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(listen).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s
    }

    /// A kept-alive client served once (so the router surely counts it), still open.
    fn served_once(listen: SocketAddr) -> TcpStream {
        let mut s = client(listen);
        s.write_all(KEEP_ALIVE_GET).expect("write");
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        s
    }

    /// A table with app `a-app` on one dyno that answers `ok`.
    fn table_with_ok_app() -> Arc<RouteTable> {
        table_with_app(serve_ok())
    }

    /// A table with app `a-app` on one dyno at `addr`.
    fn table_with_app(addr: SocketAddr) -> Arc<RouteTable> {
        let table = Arc::new(RouteTable::new("localhost"));
        table.set_app(
            "a-app",
            vec![Backend {
                dyno: "web.1".into(),
                addr,
            }],
        );
        table
    }

    /// One response on a kept-alive connection: its head (lowercased) and body.
    fn read_response(s: &mut TcpStream) -> (String, String) {
        let mut seen = read_head(s);
        let head_end = seen
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(seen.len(), |at| at + 4);
        let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut buf = [0u8; 1024];
        while seen.len() < head_end + length {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let body = String::from_utf8_lossy(&seen[head_end..]).into_owned();
        (head, body)
    }

    const KEEP_ALIVE_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a-app.localhost\r\n\r\n";

    /// A client that sends its head a few bytes at a time, each well within Pingora's silence
    /// limit, is cut off at the head's deadline with a 408 (slow loris).
    #[test]
    fn cuts_off_a_head_that_trickles_past_its_deadline() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_configured(&table, |c| {
            c.head_timeout = Duration::from_secs(1);
        });
        let mut s = TcpStream::connect(listen).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a-app.localhost\r\n")
            .expect("write");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Up to 10 s of trickling (well past the 1 s limit): a header byte every 100 ms,
        // until the router answers or closes.
        for _ in 0..100 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !got.is_empty() {
                        break;
                    }
                    if s.write_all(b"x").is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
        assert!(text.contains("did not arrive within 1 s"), "{text}");
        assert!(text.contains("x-request-id: "), "{text}");
        // The router has closed its end: nothing more comes, and the connection ends.
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// Heads Pingora answers by itself (one it cannot parse, a CONNECT) get the router's page
    /// and a request id, never Pingora's bare answer; a kept-alive connection's answers before
    /// such a head are untouched.
    #[test]
    fn answers_heads_no_hook_sees_with_the_routers_page() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_router(&table, None, None);
        let unparsable: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: a-app.localhost\r\nX-Folded: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a-app.localhost\r\nHost: b-app.localhost\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a-app.localhost\r\n\r\n",
        ];
        for head in unparsable {
            let mut s = served_once(listen);
            s.write_all(head).expect("write");
            let (answer, body) = read_response(&mut s);
            let shown = String::from_utf8_lossy(head);
            assert!(
                answer.starts_with("http/1.1 400 bad request\r\n"),
                "{shown}: {answer}"
            );
            assert!(!answer.contains("pingora"), "{shown}: {answer}");
            assert!(answer.contains("x-request-id: "), "{answer}");
            assert!(answer.contains("via: 1.1 skiff"), "{answer}");
            assert!(body.contains("is not valid HTTP/1.1"), "{body}");
            // Pingora closes the connection after it; the router's page says so.
            assert!(answer.contains("connection: close"), "{answer}");
            let mut rest = [0u8; 64];
            assert!(matches!(s.read(&mut rest), Ok(0) | Err(_)), "{shown}");
        }
        // A CONNECT, with a request behind it in the same write: the router's 405, and
        // nothing after the CONNECT's head is read as a request.
        let mut s = client(listen);
        s.write_all(
            b"CONNECT a-app.localhost:443 HTTP/1.1\r\nHost: a-app.localhost:443\r\n\r\n\
              GET / HTTP/1.1\r\nHost: a-app.localhost\r\n\r\n",
        )
        .expect("write");
        let (answer, body) = read_response(&mut s);
        assert!(
            answer.starts_with("http/1.1 405 method not allowed\r\n"),
            "{answer}"
        );
        assert!(!answer.contains("pingora"), "{answer}");
        assert!(answer.contains("x-request-id: "), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(body.contains("not supported"), "{body}");
        // Nothing but the page: an answer to the GET would follow it in the same read.
        assert!(body.ends_with("</html>\n"), "{body:?}");
        let mut rest = [0u8; 64];
        assert!(
            matches!(s.read(&mut rest), Ok(0) | Err(_)),
            "{}",
            String::from_utf8_lossy(&rest)
        );
        // The connections above leave the router serving as before.
        let mut s = served_once(listen);
        s.write_all(KEEP_ALIVE_GET).expect("write");
        let (answer, body) = read_response(&mut s);
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert_eq!(body, "ok");
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// A dyno stand-in that answers each request with its path and body, after `ms`
    /// milliseconds when the path is `/slow?ms`, with a 60 KB header when it is `/pad`; one
    /// thread per connection, kept alive.
    fn serve_paths() -> SocketAddr {
        use std::io::BufRead;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().expect("clone");
                    let mut reader = std::io::BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let Some(path) = line.split_whitespace().nth(1).map(str::to_owned) else {
                            return;
                        };
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end().to_ascii_lowercase();
                            if header.is_empty() {
                                break;
                            }
                            if let Some(v) = header.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Some(ms) = path.strip_prefix("/slow?") {
                            let ms = ms.parse().unwrap_or(0);
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                        let text = format!("{path}{}", String::from_utf8_lossy(&body));
                        // A large head and no body: what fills a client that does not read
                        // without any body write.
                        let pad = if path == "/pad" {
                            format!("X-Pad: {}\r\n", "p".repeat(60_000))
                        } else {
                            String::new()
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\n{pad}Content-Length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Every answer on a connection until the router closes it: status line and body each.
    fn answers_until_close(s: &mut TcpStream) -> Vec<(String, String)> {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let mut answers = Vec::new();
        let mut rest = &raw[..];
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let body_end = (end + 4 + length).min(rest.len());
            let status = head.lines().next().unwrap_or_default().to_owned();
            answers.push((
                status,
                String::from_utf8_lossy(&rest[end + 4..body_end]).into_owned(),
            ));
            rest = &rest[body_end..];
        }
        answers
    }

    /// Requests sent before the previous answer (pipelining) are each answered, in order; one
    /// sent while the previous is still at the dyno does not cut that one off.
    #[test]
    fn answers_pipelined_requests_in_order() {
        let table = table_with_app(serve_paths());
        let (listen, handle, run_dir) = start_router(&table, None, None);
        let get = |path: &str, close: bool| {
            let close = if close { "Connection: close\r\n" } else { "" };
            format!("GET {path} HTTP/1.1\r\nHost: a-app.localhost\r\n{close}\r\n")
        };

        // Three in one write, one with a body.
        let mut s = client(listen);
        let post = "POST /b HTTP/1.1\r\nHost: a-app.localhost\r\nContent-Length: 5\r\n\r\nhello";
        let burst = format!("{}{post}{}", get("/a", false), get("/c", true));
        s.write_all(burst.as_bytes()).expect("write");
        let answers = answers_until_close(&mut s);
        let bodies: Vec<&str> = answers.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["/a", "/bhello", "/c"], "{answers:?}");
        assert!(
            answers.iter().all(|(st, _)| st.starts_with("http/1.1 200")),
            "{answers:?}"
        );

        // The next request arrives while the first is still at the dyno.
        let mut s = client(listen);
        s.write_all(get("/slow?400", false).as_bytes())
            .expect("write");
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(get("/d", true).as_bytes()).expect("write");
        let answers = answers_until_close(&mut s);
        let bodies: Vec<&str> = answers.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["/slow?400", "/d"], "{answers:?}");
        assert!(
            answers.iter().all(|(st, _)| st.starts_with("http/1.1 200")),
            "{answers:?}"
        );

        // A head Pingora cannot parse behind a good one still gets the router's page.
        let mut s = client(listen);
        let bad = "GET / HTTP/1.1\r\nHost: a-app.localhost\r\nX-Folded: a\r\n b\r\n\r\n";
        s.write_all(format!("{}{bad}", get("/e", false)).as_bytes())
            .expect("write");
        let answers = answers_until_close(&mut s);
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(answers[0].1, "/e", "{answers:?}");
        assert!(answers[1].0.starts_with("http/1.1 400"), "{answers:?}");
        assert!(
            answers[1].1.contains("is not valid HTTP/1.1"),
            "{answers:?}"
        );

        // A body that looks like a request, behind an answer given without reading it (no
        // such app): it is never served as one, and the connection closes.
        let mut s = client(listen);
        let inside = get("/g", true);
        let unread = format!(
            "POST /f HTTP/1.1\r\nHost: b-app.localhost\r\nContent-Length: {}\r\n\r\n{inside}",
            inside.len()
        );
        s.write_all(unread.as_bytes()).expect("write");
        let answers = answers_until_close(&mut s);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].0.starts_with("http/1.1 404"), "{answers:?}");

        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// A client that sends requests and never reads the answers is cut off at the app's client
    /// timeout, even when the answers are all heads (which Pingora writes with no timeout of
    /// its own); and it keeps no place in the app's bound on requests in flight meanwhile,
    /// each place going back once the dyno has answered.
    #[test]
    fn a_client_that_never_reads_gives_its_place_back() {
        let table = table_with_app(serve_paths());
        table.set_settings(
            "a-app",
            AppSettings {
                client_timeout: Duration::from_secs(1),
                max_concurrency: 1,
                ..AppSettings::default()
            },
        );
        let (listen, handle, run_dir) = start_router(&table, None, None);
        let deaf = client(listen);
        let mut writer = deaf.try_clone().expect("clone");
        // Past its own 30 s, a blocked write says the router never let the client go.
        writer
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (cut, cut_seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let request = b"GET /pad HTTP/1.1\r\nHost: a-app.localhost\r\n\r\n";
            // Until the buffers between fill and the router's write bound ends it.
            loop {
                if let Err(e) = writer.write_all(request) {
                    let _ = cut.send(!matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ));
                    return;
                }
            }
        });
        // Another client is served while the deaf one holds its connection (15 s allows for a
        // loaded machine; with the place held it would be refused, H11, until the cut).
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        let served = loop {
            std::thread::sleep(Duration::from_millis(200));
            let mut s = client(listen);
            s.write_all(b"GET /b HTTP/1.1\r\nHost: a-app.localhost\r\nConnection: close\r\n\r\n")
                .expect("write");
            let answers = answers_until_close(&mut s);
            let status = answers
                .first()
                .map(|(st, _)| st.clone())
                .unwrap_or_default();
            if status.starts_with("http/1.1 200") {
                break true;
            }
            seen.push(status);
            if std::time::Instant::now() > deadline {
                break false;
            }
        };
        assert!(served, "never served: {seen:?}");
        // The deaf client itself is cut off at the write bound (1 s once its writes stall).
        assert_eq!(
            cut_seen.recv_timeout(Duration::from_secs(40)),
            Ok(true),
            "the client that never reads was never cut off"
        );
        drop(deaf);
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// Refusals hold descriptors too: far past the cap, connections are closed unanswered.
    #[test]
    fn closes_a_flood_past_the_cap_unanswered() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_configured(&table, |c| {
            c.max_connections = Some(1);
        });
        let _held = served_once(listen);
        // Each refusal waits up to half a second for its client to close, so these overlap
        // once the router has taken them all in (a fraction of that).
        let flood: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect(listen).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(250));
        let (mut answered, mut closed) = (0, 0);
        for mut s in flood {
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            if got.starts_with(b"HTTP/1.1 503 ") {
                answered += 1;
            } else if got.is_empty() {
                closed += 1;
            }
        }
        assert!(
            answered > 0 && closed > 0,
            "{answered} answered, {closed} closed"
        );
        assert_eq!(answered + closed, 100);
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// A connection from `ip` (a loopback address) to `to`.
    fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::from((ip, 0)))
                .expect("bind a loopback address");
            let stream = socket.connect(to).await.expect("connect");
            let stream = stream.into_std().expect("std stream");
            stream.set_nonblocking(false).expect("blocking");
            stream
        })
    }

    /// One client address cannot hold more than its share of connections; another address
    /// is served meanwhile.
    #[test]
    fn caps_connections_per_client_address() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_configured(&table, |c| {
            c.max_connections = Some(10);
            c.max_connections_per_client = Some(2);
        });
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = connect_from([127, 0, 0, 1], listen);
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            s.write_all(KEEP_ALIVE_GET).expect("write");
            let (head, _) = read_response(&mut s);
            assert!(head.starts_with("http/1.1 200"), "{head}");
            held.push(s);
        }
        let mut third = connect_from([127, 0, 0, 1], listen);
        third
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        third.write_all(KEEP_ALIVE_GET).expect("write");
        let (head, body) = read_response(&mut third);
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(body.contains("Your address"), "{body}");
        // The address's refusals take none of the router's places: a flood of them from it
        // (each held while it is told) leaves the router open to others.
        let refused: Vec<TcpStream> = (0..30)
            .map(|_| connect_from([127, 0, 0, 1], listen))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut other = connect_from([127, 0, 0, 2], listen);
        other
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        other.write_all(KEEP_ALIVE_GET).expect("write");
        let (head, _) = read_response(&mut other);
        assert!(head.starts_with("http/1.1 200"), "another address: {head}");
        drop(refused);
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// A drain closes the listener and idle connections at once, lets a request in flight
    /// finish, and then counts no open connection.
    #[test]
    fn a_drain_lets_requests_in_flight_finish() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let dyno = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                read_head(&mut stream);
                std::thread::sleep(Duration::from_millis(1500));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
            }
        });
        let table = table_with_app(dyno);
        let (listen, handle, run_dir) = start_router(&table, None, None);
        let mut idle = client(listen);
        let mut busy = client(listen);
        busy.write_all(KEEP_ALIVE_GET).expect("write");
        // Both counted before the drain begins.
        for _ in 0..200 {
            if handle.open_connections() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(handle.open_connections(), 2);
        std::thread::sleep(Duration::from_millis(200));
        handle.drain();
        let mut buf = [0u8; 64];
        assert!(
            matches!(idle.read(&mut buf), Ok(0)),
            "the idle one is closed"
        );
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(listen).is_err() {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(refused, "new connections are refused while draining");
        let (head, body) = read_response(&mut busy);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("connection: close"), "says it closes: {head}");
        assert_eq!(body, "slow");
        assert!(matches!(busy.read(&mut buf), Ok(0)), "then closed");
        for _ in 0..200 {
            if handle.open_connections() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(handle.open_connections(), 0);
        assert!(handle.drained());
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// A client that connects and sends nothing is let go at the head's deadline, without an
    /// answer (browsers open connections ahead of need and expect just a close).
    #[test]
    fn lets_go_of_a_client_that_sends_nothing() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_configured(&table, |c| {
            c.head_timeout = Duration::from_secs(1);
        });
        // Reads wait far past the limit, yet well within Pingora's own 60 s.
        let mut s = client(listen);
        let mut buf = [0u8; 64];
        assert!(matches!(s.read(&mut buf), Ok(0)), "closed without a word");
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// The head deadline counts from a head's first byte: a kept-alive connection may idle past
    /// it between requests, and a head sent in pieces within it is served.
    #[test]
    fn the_head_deadline_spares_idle_time_and_heads_sent_in_time() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_configured(&table, |c| {
            c.head_timeout = Duration::from_secs(1);
        });
        let mut s = client(listen);
        s.write_all(KEEP_ALIVE_GET).expect("write");
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "ok");
        // A stray empty line between requests begins no head (RFC 9112 section 2.2).
        s.write_all(b"\r\n").expect("write");
        std::thread::sleep(Duration::from_millis(1500));
        let (first, rest) = KEEP_ALIVE_GET.split_at(20);
        s.write_all(first).expect("write");
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(rest).expect("write");
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "ok");
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// Beyond the cap of open connections, a new client gets a 503 at once; when one
    /// closes, new clients are served again.
    #[test]
    fn refuses_connections_beyond_the_cap() {
        let table = table_with_ok_app();
        let (listen, handle, run_dir) = start_configured(&table, |c| {
            c.max_connections = Some(2);
        });
        // Two kept-alive clients, each served once, so both are surely counted.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(listen).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            s.write_all(KEEP_ALIVE_GET).expect("write");
            let (head, _) = read_response(&mut s);
            assert!(head.starts_with("http/1.1 200"), "{head}");
            held.push(s);
        }
        let (status, head, body) = get(listen.port(), "over-the-cap-0123456789");
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(body.contains("limit of open connections"), "{body}");
        drop(held.pop());
        // The router notices the close when its idle read ends: served again within a bounded
        // number of tries.
        let mut status = 0;
        for _ in 0..100 {
            status = get(listen.port(), "under-the-cap-0123456789").0;
            if status == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(status, 200);
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// From the moment `spawn_router` returns, before Pingora has bound anything, no other
    /// program can take the router's port (tokio's listeners, like most, bind with
    /// SO_REUSEADDR); the router then serves on it.
    #[test]
    fn holds_its_port_from_the_check_until_it_listens() {
        let table = table_with_app(serve_ok());
        let (listen, handle, run_dir) = spawn_for_test(&table, None, None);
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other.set_reuseaddr(true).expect("reuseaddr");
        assert!(other.bind(listen).is_err(), "another program took the port");
        assert!(std::net::TcpListener::bind(listen).is_err());
        drop(other);
        handle
            .wait_listening(Duration::from_secs(5))
            .expect("router listens");
        assert_eq!(get(listen.port(), "held-port-0123456789").0, 200);
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// A router whose Pingora never listens is an error naming the address, at once when its
    /// thread has ended and after the timeout while it runs.
    #[test]
    fn waiting_for_a_router_that_does_not_listen_names_the_address() {
        let addr = free_addr();
        let handle = |thread| RouterHandle {
            stop: watch::channel(Stop::Run).0,
            thread: Some(thread),
            open: Arc::default(),
            closed: Arc::default(),
            draining: Arc::default(),
            _reserved: vec![reserve(addr).expect("reserve")],
            addrs: vec![addr],
        };
        let ended = handle(std::thread::spawn(|| ()));
        while !ended.thread.as_ref().is_some_and(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let err = ended
            .wait_listening(Duration::from_secs(30))
            .expect_err("ended");
        assert_eq!(
            err.to_string(),
            format!("router stopped before it listened on {addr}")
        );
        drop(ended);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let running = handle(std::thread::spawn(move || {
            let _ = rx.recv();
        }));
        let err = running
            .wait_listening(Duration::from_millis(50))
            .expect_err("never listens");
        assert!(
            err.to_string()
                .starts_with(&format!("router did not start listening on {addr} within")),
            "{err}"
        );
        drop(tx);
    }

    #[test]
    fn reads_the_kernels_socket_addresses() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            proc_socket_addr(&format!("{v4:08X}:1F90")),
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))
        );
        let words: String = Ipv6Addr::LOCALHOST
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect();
        assert_eq!(
            proc_socket_addr(&format!("{words}:0050")),
            Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 80)))
        );
        for bad in [
            "",
            "0100007F",
            "0100007F:",
            "0100007:0050",
            "0100007G:0050",
            "é1000007F:0050",
        ] {
            assert_eq!(proc_socket_addr(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_listener_at_another_address_on_the_port_is_not_the_routers() {
        // The port is held at 127.0.0.1 too, bound but not listening, so that nothing else
        // running meanwhile can listen there.
        let (_other, _held, port) = loop {
            let other = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
            let port = other.local_addr().expect("addr").port();
            let held = tokio::net::TcpSocket::new_v4()
                .and_then(|s| s.bind(SocketAddr::from(([127, 0, 0, 1], port))).map(|()| s));
            if let Ok(held) = held {
                break (other, held, port);
            }
        };
        assert!(listens_on(SocketAddr::from(([127, 0, 0, 2], port))));
        assert!(!listens_on(SocketAddr::from(([127, 0, 0, 1], port))));
        assert!(!listens_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))));
    }

    /// A dyno stand-in that reads each request's body whole and answers with its length.
    fn serve_body_length() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let seen = read_head(&mut stream);
                let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let head_end = seen
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(seen.len(), |at| at + 4);
                let mut got = seen.len() - head_end;
                let mut buf = vec![0u8; 64 << 10];
                while got < length {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                let answer = got.to_string();
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                );
            }
        });
        addr
    }

    /// A small receive buffer on client connections (it bounds what a client can push that
    /// no one reads) still carries a large upload to the dyno whole.
    #[test]
    fn small_client_buffers_carry_whole_uploads() {
        let table = table_with_app(serve_body_length());
        let (listen, handle, run_dir) = start_router(&table, None, Some(16 << 10));
        let size = 8 << 20;
        let mut s = TcpStream::connect(listen).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!(
            "POST / HTTP/1.1\r\nHost: a-app.localhost\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&vec![b'u'; size]).expect("body");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with(&format!("\r\n\r\n{size}")), "{out}");
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    /// An app's bodies, all its connections together, move at its bandwidth once the first
    /// second's worth has passed.
    #[test]
    fn holds_an_apps_bodies_to_its_bandwidth() {
        let table = Arc::new(RouteTable::new("localhost"));
        table.set_app_bandwidth(1 << 20);
        let bulk = serve_bulk(2 << 20);
        table.set_app(
            "a-app",
            vec![Backend {
                dyno: "web.1".into(),
                addr: bulk,
            }],
        );
        let (listen, handle, run_dir) = start_router(&table, None, None);
        // Two downloads of 2 MiB at 1 MiB/s with a 1 MiB burst: 3 MiB owed, so the second to
        // finish cannot end before three seconds have passed.
        let started = Instant::now();
        let downloads: Vec<_> = (0..2)
            .map(|i| std::thread::spawn(move || get(listen.port(), &format!("bulk-{i}"))))
            .collect();
        for d in downloads {
            let (status, _, body) = d.join().expect("download");
            assert_eq!((status, body.len()), (200, 2 << 20));
        }
        assert!(started.elapsed() >= Duration::from_millis(2900));
        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    #[test]
    fn retries_a_refused_connection_once_on_another_dyno() {
        let table = Arc::new(RouteTable::new("localhost"));
        let closed = free_addr();
        let live = serve_ok();
        table.set_app(
            "a-app",
            vec![
                Backend {
                    dyno: "web.1".into(),
                    addr: closed,
                },
                Backend {
                    dyno: "web.2".into(),
                    addr: live,
                },
            ],
        );
        let lines = Arc::new(Lines::default());
        let (listen, handle, run_dir) = start_router(&table, Some(lines.clone()), None);

        // Every request lands on the live dyno, including those first sent to the dead one.
        for i in 0..6 {
            let id = format!("retry-test-request-{i:04}");
            let (status, head, body) = get(listen.port(), &id);
            assert_eq!((status, body.as_str()), (200, "ok"), "{head}");
            assert!(head.contains("via: 1.1 skiff"), "{head}");
            assert!(!head.contains("x-gone"), "{head}");
            assert!(!head.contains("keep-alive"), "{head}");
            let line = lines.of(&id);
            assert!(line.contains(" dyno=web.2 "), "{line}");
            assert!(line.starts_with("at=info "), "{line}");
        }

        // Only a dead dyno: H10, after one retry.
        table.set_app(
            "a-app",
            vec![Backend {
                dyno: "web.1".into(),
                addr: closed,
            }],
        );
        let (status, _, body) = get(listen.port(), "retry-test-request-h10");
        assert_eq!(status, 503);
        assert!(body.contains("H10"), "{body}");
        let line = lines.of("retry-test-request-h10");
        assert!(
            line.contains("at=error code=H10 desc=\"App crashed\""),
            "{line}"
        );

        // A dyno that reads the request and hangs up: H13, and the request is not replayed on
        // another dyno (it may have had effects).
        let (hangup, seen) = serve_hangup();
        table.set_app(
            "a-app",
            vec![
                Backend {
                    dyno: "web.1".into(),
                    addr: hangup,
                },
                Backend {
                    dyno: "web.2".into(),
                    addr: live,
                },
            ],
        );
        let mut h13 = 0;
        for i in 0..4 {
            let id = format!("retry-test-request-h13-{i}");
            let (status, _, body) = get(listen.port(), &id);
            let line = lines.of(&id);
            if line.contains(" dyno=web.1 ") {
                assert_eq!(status, 503, "{body}");
                assert!(body.contains("H13"), "{body}");
                assert!(
                    line.contains("at=error code=H13 desc=\"Connection closed without response\""),
                    "{line}"
                );
                h13 += 1;
            } else {
                assert_eq!(status, 200, "{line}");
            }
        }
        assert!(h13 > 0, "the hanging-up dyno was never chosen");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), h13);

        // Maintenance wins over everything, and lifts in place.
        table.set_settings(
            "a-app",
            AppSettings {
                maintenance: true,
                ..AppSettings::default()
            },
        );
        let (status, _, body) = get(listen.port(), "retry-test-request-h80");
        assert_eq!(status, 503);
        assert!(body.contains("H80"), "{body}");
        table.set_settings("a-app", AppSettings::default());
        table.set_app("a-app", Vec::new());
        let (status, _, body) = get(listen.port(), "retry-test-request-h14");
        assert_eq!(status, 503);
        assert!(body.contains("H14"), "{body}");

        handle.shutdown();
        let _ = std::fs::remove_dir_all(run_dir);
    }

    #[test]
    fn strips_hop_by_hop_headers() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Private, Content-Length"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("proxy-authorization", "x"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("content-length", "3"),
        ] {
            h.append(
                http::header::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        let names = hop_by_hop(&h, false);
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "te",
            "trailer",
        ] {
            assert!(names.iter().any(|n| n == gone), "{gone}: {names:?}");
        }
        assert!(!names.iter().any(|n| n == "content-length"), "{names:?}");
        assert!(!hop_by_hop(&h, true).iter().any(|n| n == "upgrade"));
        // A Connection token naming a header the request lacks lists nothing extra.
        let mut plain = http::HeaderMap::new();
        plain.append(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, x-absent"),
        );
        plain.append(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
        assert_eq!(hop_by_hop(&plain, false), [http::header::CONNECTION]);
        assert!(hop_by_hop(&http::HeaderMap::new(), false).is_empty());
    }

    #[test]
    fn maps_errors_to_codes() {
        let up = |t| {
            let mut e = Error::new(t);
            e.esource = ErrorSource::Upstream;
            classify(&e)
        };
        assert_eq!(up(ErrorType::ConnectRefused), Failure::Code(Code::H10));
        assert_eq!(up(ErrorType::ReadTimedout), Failure::Code(Code::H12));
        assert_eq!(up(ErrorType::ConnectionClosed), Failure::Code(Code::H13));
        let mut down = Error::new(ErrorType::ConnectionClosed);
        down.esource = ErrorSource::Downstream;
        assert_eq!(classify(&down), Failure::Code(Code::H18));
        assert_eq!(
            classify(&Error::new(ErrorType::HTTPStatus(413))),
            Failure::TooLarge
        );
        assert_eq!(
            classify(&Error::new(ErrorType::InternalError)),
            Failure::Code(Code::H99)
        );
    }

    #[test]
    fn log_values_stay_one_field() {
        assert_eq!(Quoted(r#"/a"b\c"#).to_string(), r#"/a\"b\\c"#);
        assert_eq!(Quoted("/plain?x=1").to_string(), "/plain?x=1");
        assert_eq!(Token("a b\u{3000}c\"d").to_string(), "a_b_c_d");
        assert_eq!(Token("app.localhost").to_string(), "app.localhost");
    }

    #[test]
    fn keeps_sane_request_ids_only() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("x-request-id", "abcdefghij-0123456789")
            .expect("header");
        assert_eq!(request_id(&req), "abcdefghij-0123456789");
        req.insert_header("x-request-id", "short").expect("header");
        let id = request_id(&req);
        assert_eq!(id.len(), 36);
    }
}

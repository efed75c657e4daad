//! A web dyno: a loopback HTTP/1.1 listener serving one release's component, one fresh
//! instance per request, or, when the app opts in with `SKIFF_INSTANCE_REUSE=N`, up to N
//! requests per instance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::watch;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::addons::GuestAddons;
use crate::engine::{LoadedComponent, WebGuest};
use crate::limits::{DynoLimiter, Failure};
use crate::logpipe::LogPipe;
use crate::outbound::{Outbound, OutboundPolicy};
use crate::{Runtime, RuntimeError};

/// Per-dyno limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory a single instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock limit per request, enforced with epochs.
    pub request_timeout: Duration,
    /// Bytes of stdout/stderr kept per request for the logs.
    pub log_bytes: usize,
    /// Requests served at once; more get a "full" answer.
    pub concurrency: usize,
    /// Fuel (roughly, wasm instructions) per request, when the engine meters fuel.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            request_timeout: Duration::from_secs(30),
            log_bytes: 64 << 10,
            concurrency: 50,
            fuel: None,
        }
    }
}

/// Where a dyno's stdout and stderr lines go. Called once per line after each request, from
/// the dyno's tokio tasks, so implementations must not block.
pub trait LogSink: Send + Sync {
    /// One line of the app's output, without its newline.
    fn line(&self, app: &str, dyno: &str, text: &str);

    /// A change of the dyno's state told by the platform, not the app (a crash loop, a
    /// recovery). Sinks that do not tell the two apart get it as a line.
    fn state(&self, app: &str, dyno: &str, text: &str) {
        self.line(app, dyno, text);
    }
}

/// What a web dyno runs.
#[derive(Clone)]
pub struct DynoSpec {
    /// The app, for logs.
    pub app: String,
    /// The dyno's name (`web.1`).
    pub name: String,
    /// The release version, for logs.
    pub release: u64,
    /// The loaded component.
    pub component: LoadedComponent,
    /// Environment variables: config vars plus Skiff's own.
    pub env: Vec<(String, String)>,
    /// argv of a CGI program (the component path, then the Procfile's arguments); unused by
    /// wasi:http components.
    pub args: Vec<String>,
    /// The unpacked app tree, visible read-only to the guest as `/app`.
    pub app_dir: PathBuf,
    /// A private writable folder, visible to the guest as `/tmp`.
    pub tmp_dir: Option<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// Where the dyno's outbound HTTP may go.
    pub outbound: Arc<OutboundPolicy>,
    /// Receives the app's output.
    pub log: Arc<dyn LogSink>,
}

/// How long a request waits for a slot of a full dyno before "full".
const FULL_WAIT: Duration = Duration::from_millis(200);

/// How long a stopped dyno still accepts connections: the router may have picked it just
/// before the route table changed.
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// A running dyno. Dropping the handle does not stop it; call [`DynoHandle::stop`].
pub struct DynoHandle {
    /// Where the dyno listens.
    pub addr: SocketAddr,
    /// The dyno's name.
    pub name: String,
    stop: watch::Sender<bool>,
    crashes: Arc<CrashWatch>,
}

impl DynoHandle {
    /// Stops accepting connections; requests already running finish.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the dyno is in a crash loop: its last requests all crashed and it has not
    /// served one since.
    pub fn crashed(&self) -> bool {
        self.crashes.crashed()
    }
}

/// Crashes in a row that put a web dyno in the crashed state.
const CRASHES_IN_A_ROW: u32 = 5;
/// The first wait of a crashed dyno; each crash after a wait doubles it, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// A web dyno's crash loop, Heroku-style. Each request runs on a fresh instance, so nothing
/// needs restarting; what the crashed state buys is that an app whose every request crashes
/// stops costing an instantiation per request: until the backoff ends the dyno answers H10 at
/// once. The first request after it runs the guest again: a success ends the crash loop, a
/// crash starts a longer wait. A new release starts new dynos, so it ends the loop at once.
#[derive(Debug)]
pub(crate) struct CrashWatch {
    state: std::sync::Mutex<CrashState>,
}

#[derive(Debug)]
struct CrashState {
    in_a_row: u32,
    backoff: Duration,
    /// Set while crashed: requests before this instant are refused.
    until: Option<Instant>,
}

/// What a request's outcome did to the dyno's state, for the caller to log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CrashChange {
    None,
    /// Entered (or re-entered) the crashed state for this long.
    Crashed(Duration),
    Recovered,
}

impl CrashWatch {
    pub(crate) fn new() -> Self {
        Self {
            state: std::sync::Mutex::new(CrashState {
                in_a_row: 0,
                backoff: FIRST_BACKOFF,
                until: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CrashState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn crashed(&self) -> bool {
        self.lock().until.is_some()
    }

    /// Whether a request arriving at `now` may run the guest.
    pub(crate) fn admits(&self, now: Instant) -> bool {
        self.lock().until.is_none_or(|until| now >= until)
    }

    /// Records a request's outcome: `crashed` for a crash of the guest, else a response
    /// (other failures, like a timeout or the memory quota, are the request's own and leave
    /// the count alone; call this only for crashes and successes).
    pub(crate) fn record(&self, crashed: bool, now: Instant) -> CrashChange {
        let mut s = self.lock();
        if !crashed {
            s.in_a_row = 0;
            s.backoff = FIRST_BACKOFF;
            return if s.until.take().is_some() {
                CrashChange::Recovered
            } else {
                CrashChange::None
            };
        }
        s.in_a_row = s.in_a_row.saturating_add(1);
        if s.in_a_row < CRASHES_IN_A_ROW {
            return CrashChange::None;
        }
        // Requests already running when the dyno entered the crashed state may crash too;
        // only a crash after the wait lengthens it.
        if s.until.is_some_and(|until| now < until) {
            return CrashChange::None;
        }
        let wait = s.backoff;
        s.until = Some(now + wait);
        s.backoff = (wait * 2).min(MAX_BACKOFF);
        CrashChange::Crashed(wait)
    }
}

/// Store data of one request's instance.
pub(crate) struct DynoState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: DynoLimiter,
    pub(crate) hooks: Outbound,
    /// What the guest may open through the add-on interfaces.
    pub(crate) addons: GuestAddons,
}

impl WasiView for DynoState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for DynoState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

impl Runtime {
    /// Starts a web dyno on a fresh loopback port.
    pub async fn start_web_dyno(&self, spec: DynoSpec) -> Result<DynoHandle, RuntimeError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let name = spec.name.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(spec.limits.concurrency.max(1)));
        let fuel = self.meters_fuel();
        let addons = self.guest_addons(&spec.env);
        let reuse = Reuse::for_spec(&spec).map(Arc::new);
        let crashes = Arc::new(CrashWatch::new());
        let watch = crashes.clone();
        let spec = Arc::new(spec);
        tracing::info!(app = %spec.app, dyno = %spec.name, release = spec.release, %addr, "dyno up");
        tokio::spawn(async move {
            // A router that chose this dyno just before its route was switched away may already
            // be connecting: closing the listener at once would reset that connection (the
            // kernel had accepted it) and fail a request the app never saw. So a stopped dyno
            // goes on accepting for a short while before it closes its port.
            let drain = tokio::time::sleep(Duration::from_secs(3600));
            tokio::pin!(drain);
            let mut stopping = false;
            loop {
                let accepted = tokio::select! {
                    _ = stop_rx.changed(), if !stopping => {
                        stopping = true;
                        drain.as_mut().reset(tokio::time::Instant::now() + STOP_DRAIN);
                        continue;
                    }
                    _ = &mut drain, if stopping => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "dyno accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small request/response exchanges: do not wait to coalesce packets.
                let _ = stream.set_nodelay(true);
                let spec = spec.clone();
                let slots = slots.clone();
                let addons = addons.clone();
                let reuse = reuse.clone();
                let watch = watch.clone();
                let conn = Conn {
                    peer,
                    port: addr.port(),
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let spec = spec.clone();
                        let slots = slots.clone();
                        let addons = addons.clone();
                        let reuse = reuse.clone();
                        let watch = watch.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handle(spec, slots, fuel, conn, addons, reuse, &watch, req).await,
                            )
                        }
                    });
                    if let Err(e) = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "dyno connection ended with an error");
                    }
                });
            }
            tracing::info!(app = %spec.app, dyno = %spec.name, "dyno stopped");
        });
        Ok(DynoHandle {
            addr,
            name,
            stop: stop_tx,
            crashes,
        })
    }
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    /// The client's address (the router, for routed requests).
    pub(crate) peer: SocketAddr,
    /// The dyno's own loopback port.
    pub(crate) port: u16,
}

/// Serves one request on a fresh instance; a failure fails this request only.
#[expect(
    clippy::too_many_arguments,
    reason = "the per-dyno state each request borrows; a struct would only repackage it"
)]
async fn handle(
    spec: Arc<DynoSpec>,
    slots: Arc<tokio::sync::Semaphore>,
    fuel: bool,
    conn: Conn,
    addons: GuestAddons,
    reuse: Option<Arc<Reuse>>,
    crashes: &CrashWatch,
    req: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let broke = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| ClientBody {
        body,
        broke: broke.clone(),
    });
    if !crashes.admits(started) {
        log_failure(&spec, &method, &path, &Failure::Crashed);
        return failure_response(&Failure::Crashed);
    }
    // A full dyno holds a request a moment for a slot, then answers "full" (H11): a burst a
    // little over its size is served, and a client re-sending as fast as it is refused is
    // slowed to a few requests a second instead of costing the host thousands.
    // A free slot is taken on the first poll, before the timer is ever registered.
    let Ok(Ok(slot)) = tokio::time::timeout(FULL_WAIT, slots.acquire_owned()).await else {
        return failure_response(&Failure::Full);
    };
    let result = match &spec.component.guest {
        WebGuest::Http(pre) => {
            let guest = Guest {
                pre: pre.clone(),
                fuel,
                addons: &addons,
                reuse,
            };
            run_guest(&spec, guest, slot, req).await
        }
        WebGuest::Cgi(pre) => {
            let addons = addons.for_instance();
            crate::cgi::serve(&spec, pre.clone(), fuel, addons, conn, slot, req).await
        }
    };
    // A guest that fails because its request body broke off (the client left mid-upload, or
    // sent a malformed chunk) failed on the client's account: any client could otherwise put
    // an app into the crashed state with a few broken uploads.
    let result = match result {
        Err(Failure::Crash(message)) if broke.load(Ordering::Relaxed) => {
            Err(Failure::Interrupted(message))
        }
        other => other,
    };
    let change = match &result {
        Ok(_) => crashes.record(false, Instant::now()),
        Err(Failure::Crash(_)) => crashes.record(true, Instant::now()),
        Err(_) => CrashChange::None,
    };
    match change {
        CrashChange::None => {}
        CrashChange::Crashed(wait) => {
            let line = format!(
                "State changed from up to crashed: {CRASHES_IN_A_ROW} requests in a row crashed; trying again in {}s (requests meanwhile get H10)",
                wait.as_secs()
            );
            tracing::warn!(app = %spec.app, dyno = %spec.name, "{line}");
            spec.log.state(&spec.app, &spec.name, &line);
        }
        CrashChange::Recovered => {
            let line = "State changed from crashed to up";
            tracing::info!(app = %spec.app, dyno = %spec.name, "{line}");
            spec.log.state(&spec.app, &spec.name, line);
        }
    }
    match result {
        Ok(resp) => {
            tracing::debug!(app = %spec.app, dyno = %spec.name, %method, path, status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
            resp
        }
        Err(failure) => {
            log_failure(&spec, &method, &path, &failure);
            failure_response(&failure)
        }
    }
}

/// A request body that notes when it breaks, so that what the guest does about it is put
/// down to the client.
pub(crate) struct ClientBody {
    body: Incoming,
    broke: Arc<AtomicBool>,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &polled {
            self.broke.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Reports a request the guest failed, to the operator's log and the app's.
pub(crate) fn log_failure(spec: &DynoSpec, method: &http::Method, path: &str, failure: &Failure) {
    let detail = match failure {
        Failure::Crash(message) | Failure::BadResponse(message) | Failure::Interrupted(message) => {
            shortened(message.lines().next().unwrap_or_default())
        }
        other => other.describe(),
    };
    // A client that left mid-upload is the client's doing, and common: not a warning.
    if matches!(failure, Failure::Interrupted(_)) {
        tracing::info!(app = %spec.app, dyno = %spec.name, %method, path, code = failure.code(), error = %detail, "request failed in the app");
    } else {
        tracing::warn!(app = %spec.app, dyno = %spec.name, %method, path, code = failure.code(), error = %detail, "request failed in the app");
    }
    spec.log.line(
        &spec.app,
        &spec.name,
        &format!(
            "Error {} ({}) on {method} {path}: {detail}",
            failure.code(),
            failure.describe()
        ),
    );
}

/// The longest detail a failure's log line carries: the text is often the guest's to choose.
const DETAIL_CHARS: usize = 300;

/// `text` cut to [`DETAIL_CHARS`], marked when cut.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(DETAIL_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A `Debug`-formatted error code on one line, without a host backtrace. A guest's error code
/// carries text the guest chose; wasmtime's errors inside it carried a host backtrace when
/// `RUST_BACKTRACE` was set, 35 KB of it for a client that hung up mid-upload. The causes
/// before it stay: they tell a reset from a timeout.
fn one_line(debug: &str) -> String {
    let causes = debug
        .find("Stack backtrace:")
        .map_or(debug, |at| &debug[..at]);
    // The escapes `Debug` wrote for the message's own line breaks.
    causes
        .split("\\n")
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The answer for a request the guest could not serve; `skiff-error` carries the code.
pub(crate) fn failure_response(failure: &Failure) -> hyper::Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{}.\n", failure.describe())))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(failure.status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "skiff-error",
        http::HeaderValue::from_static(failure.code()),
    );
    resp
}

/// Hands a request's captured output to the dyno's log sink, one call per line.
/// Heroku's `L10` for output a request wrote past its log budget (`log_bytes`).
pub(crate) fn report_dropped(spec: &DynoSpec, bytes: u64) {
    if bytes == 0 {
        return;
    }
    let line = format!(
        "Error L10 (output buffer overflow): {bytes} bytes of output dropped; a request may log {} bytes",
        spec.limits.log_bytes
    );
    tracing::warn!(target: "skiff::app", app = %spec.app, dyno = %spec.name, "{line}");
    spec.log.line(&spec.app, &spec.name, &line);
}

pub(crate) fn emit_lines(spec: &DynoSpec, stream: &str, bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        // Cut here rather than in each sink: the platform's own log escapes every character
        // it writes, and a guest printing 64 KiB lines would otherwise have it escape them all.
        let line = skiff_core::text::log_line_prefix(line);
        tracing::info!(target: "skiff::app", app = %spec.app, dyno = %spec.name, stream, "{line}");
        spec.log.line(&spec.app, &spec.name, line);
    }
}

/// A guest's WASI context as every request gets it: `env`, read-only `/app`, private `/tmp`.
/// The caller adds stdio.
pub(crate) fn guest_wasi(
    spec: &DynoSpec,
    env: &[(String, String)],
) -> Result<WasiCtxBuilder, Failure> {
    let mut wasi = WasiCtx::builder();
    wasi.envs(env);
    wasi.preopened_dir(&spec.app_dir, "/app", FsPerms::ReadOnly)
        .map_err(|e| Failure::Crash(format!("opening /app: {e:?}")))?;
    if let Some(tmp) = &spec.tmp_dir {
        wasi.preopened_dir(tmp, "/tmp", FsPerms::ReadWrite)
            .map_err(|e| Failure::Crash(format!("opening /tmp: {e:?}")))?;
    }
    Ok(wasi)
}

/// A request's store, fenced like every other: the dyno size's memory, the request deadline,
/// the fuel budget, the app's outbound policy.
pub(crate) struct GuestStore {
    pub(crate) store: Store<DynoState>,
    /// Set when the guest was stopped for growing past its memory.
    pub(crate) memory_hit: Arc<AtomicBool>,
    budget: u64,
    fuel: bool,
    /// The guest's turn among long-running guests; run its calls in `taking_turns`.
    pub(crate) turn: Arc<crate::limits::Turn>,
}

impl GuestStore {
    pub(crate) fn new(
        spec: &DynoSpec,
        engine: &Engine,
        wasi: WasiCtx,
        fuel: bool,
        addons: GuestAddons,
    ) -> Result<Self, Failure> {
        let (limiter, memory_hit) = DynoLimiter::new(spec.limits.memory_bytes);
        let state = DynoState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: limiter,
            addons,
            hooks: Outbound {
                policy: spec.outbound.clone(),
                app: spec.app.clone(),
                dyno: spec.name.clone(),
                log: Some(spec.log.clone()),
            },
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        let turn = crate::limits::fence_time(&mut store, spec.limits.request_timeout, &spec.app);
        let budget = if fuel {
            spec.limits.fuel.unwrap_or(u64::MAX)
        } else {
            0
        };
        if fuel {
            store
                .set_fuel(budget)
                .map_err(|e| Failure::Crash(format!("{e:?}")))?;
        }
        Ok(Self {
            store,
            memory_hit,
            budget,
            fuel,
            turn,
        })
    }

    /// Gives a kept instance a fresh deadline and fuel budget for its next request.
    fn rearm(&mut self, spec: &DynoSpec) {
        self.turn =
            crate::limits::fence_time(&mut self.store, spec.limits.request_timeout, &spec.app);
        if self.fuel {
            // Setting fuel only fails on an engine without metering, which `fuel` rules out.
            let _ = self.store.set_fuel(self.budget);
        }
    }

    /// Logs the fuel the request used, when the engine meters it.
    pub(crate) fn report_fuel(&self, spec: &DynoSpec) {
        if self.fuel {
            let used = self
                .budget
                .saturating_sub(self.store.get_fuel().unwrap_or(0));
            tracing::info!(target: "skiff::fuel", app = %spec.app, dyno = %spec.name, fuel = used, "request fuel");
        }
    }

    /// What a wasmtime error means for the client.
    pub(crate) fn classify(&self, e: &wasmtime::Error) -> Failure {
        Failure::classify(e, self.memory_hit.load(Ordering::Relaxed))
    }
}

/// What a wasi:http request runs on: the dyno's pre-instantiated component, and its
/// instance-reuse pool when the app opted in.
struct Guest<'a> {
    pre: ProxyPre<DynoState>,
    fuel: bool,
    addons: &'a GuestAddons,
    reuse: Option<Arc<Reuse>>,
}

/// An instance kept between requests, with the output pipes its WASI context writes to.
struct Warm {
    guest: GuestStore,
    proxy: Option<Proxy>,
    output: Output,
    served: u32,
}

/// A store's stdout and stderr, and how much of each the logs already have.
struct Output {
    stdout: LogPipe,
    stderr: LogPipe,
    stdout_seen: usize,
    stderr_seen: usize,
    dropped_seen: u64,
}

impl Output {
    /// Sends what the guest printed since the last call to the logs.
    fn emit(&mut self, spec: &DynoSpec) {
        let out = self.stdout.contents();
        let err = self.stderr.contents();
        emit_lines(
            spec,
            "stdout",
            out.get(self.stdout_seen..).unwrap_or_default(),
        );
        emit_lines(
            spec,
            "stderr",
            err.get(self.stderr_seen..).unwrap_or_default(),
        );
        self.stdout_seen = out.len();
        self.stderr_seen = err.len();
        let dropped = self.stdout.dropped() + self.stderr.dropped();
        report_dropped(spec, dropped - self.dropped_seen);
        self.dropped_seen = dropped;
    }

    /// Whether the pipes still have room for another request's output: they only grow, so
    /// an instance whose pipes are half full is retired before the guest's writes could fail.
    fn has_room(&self, capacity: usize) -> bool {
        self.stdout_seen.max(self.stderr_seen) < capacity / 2
    }
}

/// Instances a dyno keeps warm when the app sets `SKIFF_INSTANCE_REUSE=N`: each serves at
/// most N requests, one at a time, and is dropped after a failure. Instance state (globals,
/// memory) carries from one request to the next, which is why this is the app's choice.
pub(crate) struct Reuse {
    max_requests: u32,
    idle: std::sync::Mutex<Vec<Warm>>,
}

/// Idle instances a dyno keeps at most. Each holds a slot of the host's instance pool that
/// the formation check counts once per dyno, so the number stays small.
const MAX_IDLE_PER_DYNO: usize = 4;

impl Reuse {
    /// The app's choice, from its config; `None` (a fresh instance per request) unless it
    /// set a number above 1 for a wasi:http web process.
    fn for_spec(spec: &DynoSpec) -> Option<Self> {
        if !matches!(spec.component.guest, WebGuest::Http(_)) {
            return None;
        }
        let (_, value) = spec.env.iter().find(|(k, _)| k == "SKIFF_INSTANCE_REUSE")?;
        match value.trim().parse::<u32>() {
            Ok(n) if n > 1 => Some(Self {
                max_requests: n,
                idle: std::sync::Mutex::new(Vec::new()),
            }),
            Ok(_) => None,
            Err(_) => {
                spec.log.line(
                    &spec.app,
                    &spec.name,
                    &format!(
                        "SKIFF_INSTANCE_REUSE={value:?} is not a whole number; each request gets a fresh instance"
                    ),
                );
                None
            }
        }
    }

    fn take(&self) -> Option<Warm> {
        self.idle.lock().ok()?.pop()
    }

    /// Keeps an instance that served its request cleanly, unless it has served its share.
    fn give_back(&self, warm: Warm, log_bytes: usize) {
        if warm.served >= self.max_requests || !warm.output.has_room(log_bytes) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_PER_DYNO
        {
            idle.push(warm);
        }
    }
}

async fn run_guest(
    spec: &Arc<DynoSpec>,
    guest: Guest<'_>,
    slot: OwnedSemaphorePermit,
    req: hyper::Request<ClientBody>,
) -> Result<hyper::Response<ResponseBody>, Failure> {
    let Guest {
        pre,
        fuel,
        addons,
        reuse,
    } = guest;
    let mut warm = match reuse.as_ref().and_then(|r| r.take()) {
        Some(mut warm) => {
            warm.guest.rearm(spec);
            warm
        }
        None => {
            let stdout = LogPipe::new(spec.limits.log_bytes);
            let stderr = LogPipe::new(spec.limits.log_bytes);
            let mut wasi = guest_wasi(spec, &spec.env)?;
            wasi.stdout(stdout.clone()).stderr(stderr.clone());
            let guest = GuestStore::new(
                spec,
                pre.engine(),
                wasi.build(),
                fuel,
                addons.for_instance(),
            )?;
            Warm {
                guest,
                proxy: None,
                output: Output {
                    stdout,
                    stderr,
                    stdout_seen: 0,
                    stderr_seen: 0,
                    dropped_seen: 0,
                },
                served: 0,
            }
        }
    };
    let store = &mut warm.guest.store;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let spec_for_log = spec.clone();

    let (sender, receiver) = tokio::sync::oneshot::channel();
    // The router only forwards requests it could parse; one that still cannot be handed to
    // the app is the request's fault, not the app's.
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .map_err(|e| Failure::Interrupted(format!("{e:?}")))?;
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(|e| Failure::Crash(format!("{e:?}")))?;
    let spec = spec.clone();
    let turn = warm.guest.turn.clone();
    let task_turn = turn.clone();
    let task = tokio::spawn(async move {
        let turn = task_turn;
        // The slot stays taken while the guest runs, streaming included.
        let _slot = slot;
        let run = async {
            let store = &mut warm.guest.store;
            let proxy = match warm.proxy.take() {
                Some(proxy) => proxy,
                None => pre.instantiate_async(&mut *store).await?,
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, incoming, out)
                .await?;
            Ok::<_, wasmtime::Error>(proxy)
        };
        // The epoch deadline only fires while guest code runs. A guest parked on a host call
        // (writing to a client that stopped reading, waiting for a request body that never
        // comes, sleeping) is stopped by this timer instead, so it cannot hold its slot. A
        // second past the deadline: the router, whose timeout is the same by default, then
        // answers a parked guest's client with its own H12 page, and this timer frees the slot.
        let run = crate::limits::taking_turns(&turn, run);
        let result = crate::limits::by_deadline(&turn, Duration::from_secs(1), run)
            .await
            .unwrap_or_else(|| Err(wasmtime::Error::from(wasmtime::Trap::Interrupt)));
        if result.is_err() {
            turn.stopped.store(true, Ordering::Release);
        }
        // Everything after the call runs in one turn on the app's share of the cores: the
        // output (the guest may go on printing while its body streams, so it is read now, not
        // when the head is ready) and the store's teardown, whether the instance is dropped
        // here or retired by `give_back`.
        crate::limits::in_turn(&turn, move || {
            warm.output.emit(&spec);
            warm.guest.report_fuel(&spec);
            match result {
                Ok(proxy) => {
                    if let Some(reuse) = reuse {
                        warm.proxy = Some(proxy);
                        warm.served += 1;
                        reuse.give_back(warm, spec.limits.log_bytes);
                    }
                    Ok(())
                }
                // A trapped instance is never used again.
                Err(e) => Err(warm.guest.classify(&e)),
            }
        })
        .await
    });
    match receiver.await {
        Ok(Ok(resp)) => {
            // The head is out; a guest stopped while it streams the body still gets its
            // failure logged, since the client only sees a cut-off body.
            tokio::spawn(async move {
                if let Ok(Err(failure)) = task.await {
                    log_failure(&spec_for_log, &method, &path, &failure);
                }
            });
            turn.deadline.renew();
            Ok(resp.map(|body| crate::limits::Renewing::new(body, turn).boxed_unsync()))
        }
        Ok(Err(code)) => Err(Failure::Crash(format!(
            "the app answered with an error: {}",
            one_line(&format!("{code:?}"))
        ))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(Failure::Crash(
                "the app returned without setting a response".into(),
            )),
            Ok(Err(failure)) => Err(failure),
            Err(e) => Err(Failure::Crash(format!("the request task failed: {e}"))),
        },
    }
}

/// One instantiation in a fresh store with an empty context, as a request would do it.
pub(crate) async fn instantiate_once(component: &LoadedComponent) -> Result<(), RuntimeError> {
    let (limiter, _) = DynoLimiter::new(256 << 20);
    let state = DynoState {
        wasi: WasiCtx::builder().build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: limiter,
        addons: GuestAddons::default(),
        hooks: Outbound {
            policy: Arc::new(OutboundPolicy::Closed),
            app: String::new(),
            dyno: String::new(),
            log: None,
        },
    };
    let engine = match &component.guest {
        WebGuest::Http(pre) => pre.engine(),
        WebGuest::Cgi(pre) => pre.engine(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(u64::MAX / 2);
    let instantiated = match &component.guest {
        WebGuest::Http(pre) => pre.instantiate_async(&mut store).await.map(drop),
        WebGuest::Cgi(pre) => pre.instantiate_async(&mut store).await.map(drop),
    };
    instantiated.map_err(|e| RuntimeError::wasm("instantiating", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_details_stay_one_short_line() {
        let huge = "x".repeat(100_000);
        let cut = shortened(&huge);
        assert_eq!(cut.chars().count(), DETAIL_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(shortened("é".repeat(10).as_str()), "é".repeat(10));
        let code = format!(
            "{:?}",
            Some(
                "reading a body\n\nCaused by:\n    connection reset\n    Stack backtrace:\n   0: capture"
            )
        );
        assert_eq!(
            one_line(&code),
            "Some(\"reading a body Caused by: connection reset"
        );
        assert_eq!(one_line("Timeout"), "Timeout");
    }

    #[test]
    fn crash_loop_backs_off_and_a_success_ends_it() {
        let w = CrashWatch::new();
        let t0 = Instant::now();
        for _ in 1..CRASHES_IN_A_ROW {
            assert_eq!(w.record(true, t0), CrashChange::None);
        }
        // A success in between starts the count again.
        assert_eq!(w.record(false, t0), CrashChange::None);
        for _ in 1..CRASHES_IN_A_ROW {
            assert_eq!(w.record(true, t0), CrashChange::None);
        }
        assert!(!w.crashed());
        assert_eq!(w.record(true, t0), CrashChange::Crashed(FIRST_BACKOFF));
        assert!(w.crashed());
        assert!(!w.admits(t0 + FIRST_BACKOFF / 2));
        // Requests that were already running crash without lengthening the wait.
        assert_eq!(
            w.record(true, t0 + Duration::from_millis(1)),
            CrashChange::None
        );
        // After the wait the guest runs again; crashing again doubles the wait.
        let t1 = t0 + FIRST_BACKOFF;
        assert!(w.admits(t1));
        assert_eq!(w.record(true, t1), CrashChange::Crashed(FIRST_BACKOFF * 2));
        let mut t = t1;
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            t += MAX_BACKOFF;
            if let CrashChange::Crashed(wait) = w.record(true, t) {
                last = wait;
            }
        }
        assert_eq!(last, MAX_BACKOFF, "the wait is capped");
        assert_eq!(w.record(false, t + MAX_BACKOFF), CrashChange::Recovered);
        assert!(!w.crashed());
        // The next loop starts from the first wait again.
        let t2 = t + MAX_BACKOFF * 2;
        for _ in 1..CRASHES_IN_A_ROW {
            w.record(true, t2);
        }
        assert_eq!(w.record(true, t2), CrashChange::Crashed(FIRST_BACKOFF));
    }
}

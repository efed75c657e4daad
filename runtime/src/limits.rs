//! Per-instance resource limits, and telling the user which one a failed request hit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};

/// A store's limiter: a hard memory quota (growing past it traps at once, recording why) and
/// wasmtime's table and instance limits.
pub(crate) struct DynoLimiter {
    memory_limit: usize,
    others: StoreLimits,
    memory_hit: Arc<AtomicBool>,
}

impl DynoLimiter {
    pub(crate) fn new(memory_limit: usize) -> (Self, Arc<AtomicBool>) {
        let hit = Arc::new(AtomicBool::new(false));
        (
            Self {
                memory_limit,
                others: StoreLimitsBuilder::new().instances(64).build(),
                memory_hit: hit.clone(),
            },
            hit,
        )
    }
}

impl ResourceLimiter for DynoLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_hit.store(true, Ordering::Relaxed);
            // Trapping (rather than failing the grow) stops a guest that would otherwise
            // retry or limp on; the request fails and the dyno serves the next one.
            return Err(wasmtime::format_err!(
                "memory quota exceeded: the instance asked for {} MiB; this dyno size allows {} MiB",
                desired >> 20,
                self.memory_limit >> 20
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.others.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

/// How long a guest runs as an ordinary request before it counts as long-running.
const LONG_RUNNING: Duration = Duration::from_millis(50);

/// All cores but one, at least one: the share that leaves every other app a core to run on.
fn all_but_one_core() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// A core count from the operator's environment (`0`: no share), else all cores but one.
fn cores_from_env(var: &str) -> usize {
    match std::env::var(var) {
        Ok(v) => v.trim().parse::<usize>().unwrap_or_else(|_| {
            tracing::warn!(var, value = %v, "not a whole number of cores; ignored");
            all_but_one_core()
        }),
        Err(_) => all_but_one_core(),
    }
}

/// Long-running guests, all apps together, share this many cores: however many busy loops
/// the apps start, short requests keep a core to run on. The operator sets the share with
/// `SKIFF_LONG_RUNNING_CORES` (`0`: no share, long-running guests only yield at every tick,
/// which is how `skiff bench isolation` compares the two).
static LONG_RUNNERS: LazyLock<Option<Arc<Semaphore>>> = LazyLock::new(|| {
    let share = cores_from_env("SKIFF_LONG_RUNNING_CORES");
    (share > 0).then(|| Arc::new(Semaphore::new(share)))
});

/// How many of one app's guests (web requests, workers, one-off runs) may run guest code at
/// once while other apps run guests too: all cores but one by default, so that no app,
/// however it is loaded and whatever its requests cost, can take every core from the others.
/// An app alone on the host uses every core. `SKIFF_APP_CORES` sets it (`0`: no share).
static APP_CORES: LazyLock<usize> = LazyLock::new(|| cores_from_env("SKIFF_APP_CORES"));

/// How long after two apps last ran guests at once the host still counts as shared: an app
/// whose requests come every few milliseconds is not alone between two of them.
const SHARED_FOR: Duration = Duration::from_millis(500);

/// Apps with a guest call in flight.
static ACTIVE_APPS: AtomicUsize = AtomicUsize::new(0);

/// When two apps last had guest calls in flight at once, in milliseconds since [`SINCE`],
/// plus one (0: never).
static SHARED_AT: AtomicU64 = AtomicU64::new(0);

static SINCE: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis_plus_one() -> u64 {
    u64::try_from(SINCE.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// True while more than one app runs guests: then apps keep to their shares.
fn host_is_shared() -> bool {
    if ACTIVE_APPS.load(Ordering::Relaxed) >= 2 {
        return true;
    }
    let at = SHARED_AT.load(Ordering::Relaxed);
    at != 0 && millis_plus_one().saturating_sub(at) < SHARED_FOR.as_millis() as u64
}

/// One app's share of the cores.
pub(crate) struct AppShare {
    permits: Arc<Semaphore>,
    /// The app's guest calls in flight.
    calls: AtomicUsize,
}

impl AppShare {
    /// Counts a guest call of the app until the returned guard drops.
    fn enter(self: &Arc<Self>) -> InFlight {
        let active = if self.calls.fetch_add(1, Ordering::AcqRel) == 0 {
            ACTIVE_APPS.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            ACTIVE_APPS.load(Ordering::Acquire)
        };
        if active >= 2 {
            SHARED_AT.store(millis_plus_one(), Ordering::Relaxed);
        }
        InFlight(self.clone())
    }
}

struct InFlight(Arc<AppShare>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            ACTIVE_APPS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The apps' shares of the cores. A share lives as long as a guest of its app does (each
/// guest's turn holds it); between guests it has nothing worth keeping (no calls, every
/// permit free), so the map holds it weakly and an idle or destroyed app leaves only a dead
/// entry, swept once the map has doubled since the last sweep.
#[derive(Default)]
struct Shares {
    apps: HashMap<String, Weak<AppShare>>,
    sweep_at: usize,
}

impl Shares {
    fn share(&mut self, app: &str, cores: usize) -> Arc<AppShare> {
        let share = || {
            Arc::new(AppShare {
                permits: Arc::new(Semaphore::new(cores)),
                calls: AtomicUsize::new(0),
            })
        };
        // An app whose guests come one at a time finds its dead entry on every call: it is
        // refilled in place, without a new key.
        if let Some(entry) = self.apps.get_mut(app) {
            if let Some(live) = entry.upgrade() {
                return live;
            }
            let fresh = share();
            *entry = Arc::downgrade(&fresh);
            return fresh;
        }
        let share = share();
        self.apps.insert(app.to_owned(), Arc::downgrade(&share));
        if self.apps.len() >= self.sweep_at {
            self.apps.retain(|_, s| s.strong_count() > 0);
            self.sweep_at = (self.apps.len() * 2).max(64);
        }
        share
    }
}

static APP_SHARES: LazyLock<Mutex<Shares>> = LazyLock::new(|| Mutex::new(Shares::default()));

/// The share of the cores `app`'s guests take turns on, if shares are on.
fn app_share(app: &str) -> Option<Arc<AppShare>> {
    let cores = *APP_CORES;
    if cores == 0 {
        return None;
    }
    let mut shares = APP_SHARES.lock().unwrap_or_else(|e| e.into_inner());
    Some(shares.share(app, cores))
}

/// When a guest call must end. Until its response head is out, that is a fixed time after
/// the call started (the request deadline). From then on each chunk of body the client takes
/// renews it for as long again, as Heroku's router counts a rolling window after the first
/// byte: a long download or stream lives as long as it moves, and one that stops moving (a
/// guest that computes without writing, a client that stopped reading) still ends.
pub(crate) struct Deadline {
    /// Milliseconds since [`SINCE`].
    at: AtomicU64,
    window: Duration,
}

impl Deadline {
    fn new(window: Duration) -> Self {
        Self {
            at: AtomicU64::new(Self::millis(Instant::now() + window)),
            window,
        }
    }

    fn millis(at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(*SINCE).as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// The deadline as it stands.
    pub(crate) fn at(&self) -> Instant {
        *SINCE + Duration::from_millis(self.at.load(Ordering::Relaxed))
    }

    fn passed(&self, now: Instant) -> bool {
        Self::millis(now) >= self.at.load(Ordering::Relaxed)
    }

    /// The response moved on (its head went out, the client took a chunk): the call may run
    /// one more window from now.
    pub(crate) fn renew(&self) {
        self.at.fetch_max(
            Self::millis(Instant::now() + self.window),
            Ordering::Relaxed,
        );
    }
}

/// Runs a guest call until it ends or until `grace` past its deadline, however often that
/// moves meanwhile; `None` when the deadline came first.
pub(crate) async fn by_deadline<F: Future>(
    turn: &Turn,
    grace: Duration,
    call: F,
) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    loop {
        let until = turn.deadline.at() + grace;
        match tokio::time::timeout_at(until.into(), call.as_mut()).await {
            Ok(out) => return Some(out),
            Err(_) if Instant::now() >= turn.deadline.at() + grace => return None,
            // Renewed while the timer ran: wait for the new one.
            Err(_) => {}
        }
    }
}

/// A response body that renews its guest's deadline with each chunk the client takes, and
/// ends in an error rather than quietly when the guest was stopped before finishing it.
pub(crate) struct Renewing<B> {
    body: B,
    turn: Arc<Turn>,
}

impl<B> Renewing<B> {
    pub(crate) fn new(body: B, turn: Arc<Turn>) -> Self {
        Self { body, turn }
    }
}

impl<B> http_body::Body for Renewing<B>
where
    B: http_body::Body<Error = wasmtime_wasi_http::Error> + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // An empty chunk is no progress: hyper asks for the next one at once, whether or
            // not the client reads, so renewing on it would let a guest writing nothing run on.
            Poll::Ready(Some(Ok(frame)))
                if frame.data_ref().is_none_or(bytes::Buf::has_remaining) =>
            {
                self.turn.deadline.renew();
            }
            // A stopped guest's store is dropped with its body unfinished, which wasi:http
            // reads as the body's end: for a chunked answer the client would take a cut-off
            // body for a whole one.
            Poll::Ready(None) if self.turn.stopped.load(Ordering::Acquire) => {
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the app was stopped before it finished its response".into(),
                )))));
            }
            _ => {}
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

/// The shares a guest's code runs under, and its deadline.
pub(crate) struct Turn {
    /// Its app's share of the cores.
    app: Option<Arc<AppShare>>,
    /// Set by the epoch callback once the guest has run for [`LONG_RUNNING`]; from then on it
    /// also needs a turn on the long-running guests' share.
    long: AtomicBool,
    pub(crate) deadline: Deadline,
    /// Set when the guest call failed or was stopped, before its store goes.
    pub(crate) stopped: AtomicBool,
}

/// Bounds a store's wall-clock time. At every epoch tick a running guest yields to the
/// executor, so a guest that never returns cannot hold a runtime thread and starve other
/// dynos; once its [`Deadline`] (`timeout`, renewed as its response moves) has passed it
/// traps with `Trap::Interrupt`. A guest parked on a host call sees no tick: run its calls in
/// [`by_deadline`] too.
///
/// The returned turn says which shares of the cores the guest's code runs under: its app's
/// share always, the long-running guests' share once it has run for [`LONG_RUNNING`]. Run
/// the guest's calls inside [`taking_turns`] with it.
pub(crate) fn fence_time<T: 'static>(
    store: &mut Store<T>,
    timeout: Duration,
    app: &str,
) -> Arc<Turn> {
    let started = Instant::now();
    let turn = Arc::new(Turn {
        app: app_share(app),
        long: AtomicBool::new(false),
        deadline: Deadline::new(timeout),
        stopped: AtomicBool::new(false),
    });
    let mine = turn.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        if mine.deadline.passed(now) {
            return Ok(UpdateDeadline::Interrupt);
        }
        if now.duration_since(started) >= LONG_RUNNING {
            mine.long.store(true, Ordering::Relaxed);
        }
        // Yielding gives the guest's turns back (see `taking_turns`); it queues again behind
        // whoever waited.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    turn
}

type Acquiring = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A guest's turn on one share of the cores.
#[derive(Default)]
enum Hold {
    #[default]
    Not,
    Queued(Acquiring),
    /// Held until dropped; no permit when running without one (borrowed, or a closed
    /// semaphore).
    Held {
        _permit: Option<OwnedSemaphorePermit>,
    },
}

impl Hold {
    /// Ready once the turn is held. When no permit is free, `borrow` says whether to run
    /// without one rather than queue.
    fn poll_take(
        &mut self,
        share: &Arc<Semaphore>,
        borrow: bool,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        loop {
            match self {
                Hold::Held { .. } => return Poll::Ready(()),
                Hold::Queued(acquiring) => {
                    let Poll::Ready(permit) = acquiring.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    *self = Hold::Held { _permit: permit };
                }
                Hold::Not => {
                    *self = match share.clone().try_acquire_owned() {
                        Ok(permit) => Hold::Held {
                            _permit: Some(permit),
                        },
                        Err(_) if borrow => Hold::Held { _permit: None },
                        Err(_) => {
                            let share = share.clone();
                            Hold::Queued(Box::pin(async move { share.acquire_owned().await.ok() }))
                        }
                    }
                }
            }
        }
    }

    /// Takes a turn of the app's share; alone on the host, an app may use the cores beyond
    /// its share, and gives them back at its next tick once another app's guests want them.
    fn poll_app(&mut self, turn: &Turn, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &turn.app {
            Some(app) => self.poll_take(&app.permits, !host_is_shared(), cx),
            None => Poll::Ready(()),
        }
    }
}

/// Runs a guest call so that guest code runs only while it holds its turns: the app's share
/// of the cores, and the long-running guests' share once it is long-running. Every time the
/// call stops (an epoch tick, a host call that waits, the end) the turns are given back, so
/// a guest parked on a client that stopped reading holds nothing, and guests of one app take
/// a tick each in turn (the semaphores are fair).
pub(crate) async fn taking_turns<F: Future>(turn: &Turn, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    let _in_flight = turn.app.as_ref().map(AppShare::enter);
    let mut app = Hold::Not;
    let mut long = Hold::Not;
    std::future::poll_fn(|cx| {
        std::task::ready!(app.poll_app(turn, cx));
        if turn.long.load(Ordering::Relaxed)
            && let Some(share) = LONG_RUNNERS.as_ref()
        {
            std::task::ready!(long.poll_take(share, false, cx));
        }
        let polled = call.as_mut().poll(cx);
        app = Hold::Not;
        long = Hold::Not;
        polled
    })
    .await
}

/// Runs `f` on the guest's app's share of the cores. Dropping a used store is such work: the
/// instance pool gives its memory back then, which for a guest that grew to its limit costs
/// about as much as growing did.
pub(crate) async fn in_turn<R>(turn: &Turn, f: impl FnOnce() -> R) -> R {
    let mut app = Hold::Not;
    std::future::poll_fn(|cx| app.poll_app(turn, cx)).await;
    f()
}

/// Why a request (or command) failed in the guest, with Heroku-style codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The guest grew past its dyno size's memory (Heroku's R15).
    Memory,
    /// The guest ran past the request deadline (Heroku's H12).
    Timeout,
    /// The guest used up its CPU budget (fuel).
    CpuBudget,
    /// The dyno already serves as many requests as its size allows.
    Full,
    /// The host has no free instance slot.
    PoolExhausted,
    /// Any other trap or error: a crash of this request only.
    Crash(String),
    /// The dyno's last requests all crashed: it refuses requests until its backoff ends.
    Crashed,
    /// The app answered with something that is not a response (a CGI program's header block
    /// is malformed, or it exited without writing one).
    BadResponse(String),
    /// The request failed on the client's side: its body broke off or was malformed, or it
    /// could not be handed to the app at all. Not the app's crash, so it never counts toward
    /// the crashed state, which a client could otherwise bring about at will.
    Interrupted(String),
}

/// What went wrong, then where: the first line names every cause, each by its own first line;
/// the guest's frames follow. A trap's outermost message is only "error while executing at
/// wasm backtrace:" over the frames, and what happened (`wasm trap: ...`) is its cause, so
/// the first line alone would say where and not what.
fn crash_message(e: &wasmtime::Error) -> String {
    let summary = e
        .chain()
        .map(|cause| {
            let text = cause.to_string();
            let first = text.lines().next().unwrap_or_default().trim().to_owned();
            match first.strip_suffix(" at wasm backtrace:") {
                Some(head) => head.to_owned(),
                None => first,
            }
        })
        .collect::<Vec<_>>()
        .join(": ");
    match e.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(frames) => format!("{summary}\n{frames}"),
        None => summary,
    }
}

impl Failure {
    /// Classifies a wasmtime error; `memory_hit` says whether the limiter refused a grow.
    pub(crate) fn classify(e: &wasmtime::Error, memory_hit: bool) -> Self {
        if memory_hit {
            return Failure::Memory;
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout,
            Some(Trap::OutOfFuel) => Failure::CpuBudget,
            _ if e
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some() =>
            {
                Failure::PoolExhausted
            }
            _ => Failure::Crash(crash_message(e)),
        }
    }

    /// The code that appears in logs and in the `skiff-error` response header.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Memory => "R15",
            Failure::Timeout => "H12",
            Failure::CpuBudget => "R16",
            Failure::Full => "H11",
            Failure::PoolExhausted => "H99",
            Failure::Crash(_) | Failure::Crashed => "H10",
            // Heroku's code for a poorly formatted HTTP response.
            Failure::BadResponse(_) => "H17",
            // Heroku's router code for a request whose client broke it off.
            Failure::Interrupted(_) => "H18",
        }
    }

    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self {
            Failure::Memory | Failure::Crash(_) => 500,
            Failure::Timeout
            | Failure::CpuBudget
            | Failure::Full
            | Failure::PoolExhausted
            | Failure::Crashed => 503,
            Failure::BadResponse(_) => 502,
            Failure::Interrupted(_) => 400,
        }
    }

    /// One line for the client and the logs.
    pub fn describe(&self) -> String {
        match self {
            Failure::Memory => {
                "Memory quota exceeded: the app grew past its dyno size's memory".into()
            }
            Failure::Timeout => "Request timeout: the app did not finish in time".into(),
            Failure::CpuBudget => "CPU budget exhausted for this request".into(),
            Failure::Full => "Dyno at capacity: too many requests at once for its size".into(),
            Failure::PoolExhausted => "The platform has no free instance slot".into(),
            Failure::Crash(_) => {
                "Application error: the app crashed while handling this request".into()
            }
            Failure::Crashed => {
                "App crashed: its recent requests all crashed, so the dyno waits before trying again".into()
            }
            Failure::BadResponse(_) => {
                "Bad response: the app's answer is not a well-formed CGI response".into()
            }
            Failure::Interrupted(_) => {
                "Request interrupted: the client's request broke off or was malformed".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_says_what_happened_first() {
        let trap = wasmtime::Error::from(Trap::UnreachableCodeReached)
            .context("error while executing at wasm backtrace:\n    0: 0x1a2b - app!main");
        let message = crash_message(&trap);
        assert_eq!(
            message.lines().next(),
            Some("error while executing: wasm trap: wasm `unreachable` instruction executed")
        );
    }

    /// The tests below share the host-wide count of active apps.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn share_of(cores: usize) -> Arc<AppShare> {
        Arc::new(AppShare {
            permits: Arc::new(Semaphore::new(cores)),
            calls: AtomicUsize::new(0),
        })
    }

    fn turn_on(share: &Arc<AppShare>) -> Turn {
        Turn {
            app: Some(share.clone()),
            long: AtomicBool::new(false),
            deadline: Deadline::new(Duration::from_secs(3600)),
            stopped: AtomicBool::new(false),
        }
    }

    /// A turn whose deadline has passed, renewed for an hour at a time.
    fn overdue() -> Arc<Turn> {
        Arc::new(Turn {
            app: None,
            long: AtomicBool::new(false),
            deadline: Deadline {
                at: AtomicU64::new(0),
                window: Duration::from_secs(3600),
            },
            stopped: AtomicBool::new(false),
        })
    }

    /// Past its deadline a call that waits is stopped; each chunk of body the client takes
    /// gives it a window more, which is how a long download lives on.
    #[tokio::test]
    async fn chunks_taken_renew_the_deadline() {
        use http_body_util::BodyExt;
        let turn = overdue();
        assert!(turn.deadline.passed(Instant::now()));
        let stopped = by_deadline(&turn, Duration::ZERO, std::future::pending::<()>()).await;
        assert_eq!(stopped, None);

        let chunk = || {
            http_body_util::Full::new(bytes::Bytes::from_static(b"a chunk"))
                .map_err(|never| match never {})
        };
        let taken = Renewing::new(chunk(), turn.clone()).collect().await;
        assert_eq!(
            taken.ok().map(|b| b.to_bytes()).as_deref(),
            Some(&b"a chunk"[..])
        );
        assert!(!turn.deadline.passed(Instant::now()));
        assert_eq!(
            by_deadline(&turn, Duration::ZERO, async { 7 }).await,
            Some(7)
        );

        // An empty chunk is no progress.
        struct OneEmptyChunk(bool);
        impl http_body::Body for OneEmptyChunk {
            type Data = bytes::Bytes;
            type Error = wasmtime_wasi_http::Error;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
                let first = !std::mem::replace(&mut self.0, true);
                Poll::Ready(first.then(|| Ok(http_body::Frame::data(bytes::Bytes::new()))))
            }
        }
        let idle = overdue();
        let taken = Renewing::new(OneEmptyChunk(false), idle.clone())
            .collect()
            .await;
        assert!(taken.is_ok());
        assert!(idle.deadline.passed(Instant::now()));

        // The body of a guest stopped before it finished ends in an error, not quietly.
        turn.stopped.store(true, Ordering::Release);
        assert!(Renewing::new(chunk(), turn).collect().await.is_err());
    }

    /// A guest waiting on a host call (here, a channel) holds no turn while it waits, and
    /// none once it has finished.
    #[tokio::test]
    async fn a_parked_guest_gives_its_turn_back() {
        let _serial = SERIAL.lock().await;
        let share = share_of(1);
        let turn = turn_on(&share);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let call = async move {
            let _ = rx.await;
        };
        let look = async {
            tokio::task::yield_now().await;
            let free = share.permits.available_permits();
            let _ = tx.send(());
            free
        };
        let ((), free) = tokio::join!(taking_turns(&turn, call), look);
        assert_eq!(free, 1);
        assert_eq!(share.permits.available_permits(), 1);
    }

    /// An app alone on the host runs past its share; once another app's guests run too, its
    /// guest code waits for a turn of its share.
    #[tokio::test]
    async fn apps_keep_to_their_shares_only_when_the_host_is_shared() {
        let _serial = SERIAL.lock().await;
        let alone = share_of(1);
        let held = alone.permits.clone().try_acquire_owned().ok();
        // Other tests in this binary run guests of other apps; wait until they are done.
        for _ in 0..600 {
            if !host_is_shared() {
                break;
            }
            tokio::time::sleep(SHARED_FOR / 10).await;
        }
        assert!(!host_is_shared());
        let ran = AtomicBool::new(false);
        let borrowed = tokio::time::timeout(
            Duration::from_secs(10),
            taking_turns(&turn_on(&alone), async {
                ran.store(true, Ordering::Relaxed)
            }),
        )
        .await;
        assert!(borrowed.is_ok(), "alone, it borrows instead of waiting");
        assert!(ran.load(Ordering::Relaxed));

        // Another app's guest is in flight (parked on a channel).
        let other = share_of(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let other_turn = turn_on(&other);
        let mut other_call = std::pin::pin!(taking_turns(&other_turn, async move {
            let _ = rx.await;
        }));
        assert!(poll_once(other_call.as_mut()).await.is_pending());
        let turn = turn_on(&alone);
        let ran = AtomicBool::new(false);
        let mut call = std::pin::pin!(taking_turns(&turn, async {
            ran.store(true, Ordering::Relaxed)
        }));
        assert!(poll_once(call.as_mut()).await.is_pending());
        assert!(
            !ran.load(Ordering::Relaxed),
            "shared, it waits for its turn"
        );
        drop(held);
        call.await;
        assert!(ran.load(Ordering::Relaxed));
        assert_eq!(alone.permits.available_permits(), 1);
        let _ = tx.send(());
        other_call.await;
    }

    /// Apps get shares of their own, which all of an app's live guests hold together.
    #[test]
    fn each_app_has_its_own_share() {
        let mut shares = Shares::default();
        let a = shares.share("alpha-app", 1);
        assert!(Arc::ptr_eq(&shares.share("alpha-app", 1), &a));
        assert!(!Arc::ptr_eq(&shares.share("beta-app", 1), &a));
    }

    /// Once no guest of an app is live its share goes, and dead entries are swept: apps that
    /// come and go (or are destroyed) do not grow the map.
    #[test]
    fn shares_go_with_their_apps_last_guest() {
        let mut shares = Shares::default();
        let kept = shares.share("kept-app", 1);
        for i in 0..1000 {
            drop(shares.share(&format!("app-{i}"), 1));
        }
        assert!(shares.apps.len() <= 64, "{} entries", shares.apps.len());
        assert!(Arc::ptr_eq(&shares.share("kept-app", 1), &kept));
        drop(kept);
        assert!(
            shares
                .apps
                .get("kept-app")
                .and_then(Weak::upgrade)
                .is_none()
        );
    }

    async fn poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}

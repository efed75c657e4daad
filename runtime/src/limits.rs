//! Per-instance resource limits, and telling the user which one a failed request hit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

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

/// Long-running guests share this many cores: all but one, so that however many busy loops
/// one app starts, short requests of every app keep a core to run on. The operator sets the
/// share with `SKIFF_LONG_RUNNING_CORES` (`0`: no share, long-running guests only yield at
/// every tick, which is how `skiff bench isolation` compares the two).
static LONG_RUNNERS: LazyLock<Option<Arc<Semaphore>>> = LazyLock::new(|| {
    let all_but_one = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .saturating_sub(1)
        .max(1);
    let share = match std::env::var("SKIFF_LONG_RUNNING_CORES") {
        Ok(v) => v.trim().parse::<usize>().unwrap_or_else(|_| {
            tracing::warn!(value = %v, "SKIFF_LONG_RUNNING_CORES is not a whole number; ignored");
            all_but_one
        }),
        Err(_) => all_but_one,
    };
    (share > 0).then(|| Arc::new(Semaphore::new(share)))
});

/// A guest's turn on the long-running guests' share of the cores.
#[derive(Default)]
pub(crate) struct Turn {
    held: Mutex<Option<OwnedSemaphorePermit>>,
    /// Set while the guest queues for a turn, as opposed to waiting on a host call.
    queued: AtomicBool,
}

impl Turn {
    fn release(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.take();
        }
    }
}

/// Bounds a store's wall-clock time. At every epoch tick a running guest yields to the
/// executor, so a guest that never returns cannot hold a runtime thread and starve other
/// dynos; once `timeout` has passed it traps with `Trap::Interrupt`.
///
/// A guest still running after [`LONG_RUNNING`] also takes turns on the long-running
/// guests' share of the cores: it runs a tick at a time while it holds a permit, handing the
/// permit on at every tick (the semaphore is fair). Busy loops then queue among themselves
/// instead of in front of every other app's short requests. Run the guest's calls inside
/// [`taking_turns`] with the returned handle, so a guest parked on a host call (a client
/// that stopped reading) does not keep its turn while it waits.
pub(crate) fn fence_time<T: 'static>(store: &mut Store<T>, timeout: Duration) -> Arc<Turn> {
    let started = Instant::now();
    let deadline = started + timeout;
    let turn = Arc::new(Turn::default());
    let mine = turn.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        if now >= deadline {
            return Ok(UpdateDeadline::Interrupt);
        }
        let Some(share) = LONG_RUNNERS.as_ref() else {
            return Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ));
        };
        if now.duration_since(started) < LONG_RUNNING {
            return Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ));
        }
        // Give the turn back, then queue for the next one.
        mine.release();
        mine.queued.store(true, Ordering::Release);
        let turn = mine.clone();
        let share = share.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                let permit = share.acquire_owned().await.ok();
                if let Ok(mut held) = turn.held.lock() {
                    *held = permit;
                }
                turn.queued.store(false, Ordering::Release);
            }),
        ))
    });
    turn
}

/// Runs a guest call, giving its turn back whenever the guest waits on anything other than
/// the turn itself, and when the call ends.
pub(crate) async fn taking_turns<F: Future>(turn: &Turn, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
        Poll::Ready(out) => {
            turn.release();
            Poll::Ready(out)
        }
        Poll::Pending => {
            if !turn.queued.load(Ordering::Acquire) {
                turn.release();
            }
            Poll::Pending
        }
    })
    .await
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
            _ => Failure::Crash(format!("{e:#}")),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While `turn` holds a permit of `share` and the call waits, how many permits are free.
    async fn free_while_waiting(share: &Arc<Semaphore>, turn: &Turn, queued: bool) -> usize {
        let permit = share.clone().acquire_owned().await.ok();
        assert!(permit.is_some());
        if let Ok(mut held) = turn.held.lock() {
            *held = permit;
        }
        turn.queued.store(queued, Ordering::Release);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let call = async move {
            let _ = rx.await;
        };
        let look = async {
            tokio::task::yield_now().await;
            let free = share.available_permits();
            let _ = tx.send(());
            free
        };
        let ((), free) = tokio::join!(taking_turns(turn, call), look);
        // However it waited, the call's end gives the turn back.
        assert_eq!(share.available_permits(), 1);
        free
    }

    /// A guest waiting on a host call gives its turn back; one queueing for a turn (which it
    /// does holding nothing) is left alone.
    #[tokio::test]
    async fn a_parked_guest_gives_its_turn_back() {
        let share = Arc::new(Semaphore::new(1));
        let turn = Turn::default();
        assert_eq!(free_while_waiting(&share, &turn, false).await, 1);
        assert_eq!(free_while_waiting(&share, &turn, true).await, 0);
    }
}

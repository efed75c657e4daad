//! Per-instance resource limits, and telling the user which one a failed request hit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};

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

/// Bounds a store's wall-clock time. At every epoch tick a running guest yields to the
/// executor, so a guest that never returns cannot hold a runtime thread and starve other
/// dynos; once `timeout` has passed it traps with `Trap::Interrupt`.
pub(crate) fn fence_time<T: 'static>(store: &mut Store<T>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
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

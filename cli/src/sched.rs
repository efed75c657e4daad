//! Short scheduler slices for the threads that serve requests.
//!
//! Linux's EEVDF scheduler lets a running thread keep its core for the rest of its slice
//! (1.4 ms on a 2-core machine; it grows with the core count) before a thread that just woke
//! gets it. A request wakes several of Skiff's threads in turn (router, dyno, router again),
//! so on a busy host each wake-up can wait behind some other process's slice, and those waits
//! are the tail of the latency. Since Linux 6.12 a thread may ask for a shorter slice
//! (`sched_attr.sched_runtime` under `SCHED_OTHER`, no privilege needed), and a waking thread
//! whose slice is shorter than the running one's takes the core at once. The slice changes
//! when a thread runs, not how much: its share of the cores still follows its nice value.

use std::io;
use std::time::Duration;

/// `struct sched_attr` as of its first version (`SCHED_ATTR_SIZE_VER0`, 48 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_OTHER: u32 = 0;

/// Threads and processes this thread starts begin with the kernel's defaults.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The slices the kernel accepts, in microseconds; it holds a request to this range.
const SLICE_RANGE_US: (u64, u64) = (100, 100_000);

/// What `before_router` logs when the kernel took the slice; the isolation bench looks for it
/// in its platform's log.
pub(crate) const APPLIED: &str = "serving threads run with";

/// The slice in force, in microseconds, for `--sched-slice-us micros` (0: the kernel's).
pub(crate) fn in_force_us(micros: u64) -> Option<u64> {
    (micros > 0).then(|| micros.clamp(SLICE_RANGE_US.0, SLICE_RANGE_US.1))
}

/// `--sched-slice-us` of the benches that run a router (and dynos) in their own process.
#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct BenchSlice {
    /// Microseconds of scheduler slice for the router's (and the dynos') threads, as `skiff
    /// up --sched-slice-us` sets it (0: the kernel's default). The load generator and the
    /// peers keep the kernel's default.
    #[arg(
        long = "sched-slice-us",
        env = "SKIFF_SCHED_SLICE_US",
        default_value_t = 100
    )]
    pub(crate) micros: u64,
}

/// What asking for a slice came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Applied,
    /// The thread runs under another policy (an operator's choice, e.g. real-time): left alone.
    OtherPolicy,
    /// The kernel took the call but keeps its own slice (Linux before 6.12).
    Unsupported,
}

/// Who starts with the calling thread's slice.
#[derive(Clone, Copy, Debug)]
enum Inherit {
    /// Threads this thread starts (Pingora's, which Skiff cannot hook) inherit the slice.
    Threads,
    /// Nothing this thread starts inherits it: processes such as builds and git keep the
    /// kernel's slice, so requests wake ahead of them.
    Nothing,
}

/// The slice Skiff's serving threads ask for, and how a process hands it out: the thread that
/// starts the router asks first (Pingora's threads inherit it), then stops passing it on, and
/// each runtime thread asks for itself as it starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Serving {
    slice: Option<Duration>,
    /// The process's nice value at start, which reset-on-fork drops when it is negative.
    nice: Option<i32>,
}

impl Serving {
    /// `micros` of 0 leaves every thread with the kernel's slice; others are held to what the
    /// kernel takes, so the logs say what is in force.
    pub(crate) fn new(micros: u64) -> Self {
        Self {
            slice: in_force_us(micros).map(Duration::from_micros),
            nice: nice().ok(),
        }
    }

    /// Call on the thread about to start the router; logs what the kernel made of it and
    /// says it in a few words, for the benches' headers.
    pub(crate) fn before_router(&self) -> String {
        let kernels = "the kernel's scheduler slice".to_owned();
        let Some(slice) = self.slice else {
            return kernels;
        };
        let us = slice.as_micros();
        match request(slice, Inherit::Threads, None) {
            Ok(Outcome::Applied) => {
                tracing::info!("{APPLIED} {us} µs scheduler slices");
                return format!("{us} µs scheduler slices");
            }
            Ok(Outcome::OtherPolicy) => tracing::info!(
                "not asking for {us} µs scheduler slices: Skiff runs under a scheduling \
                 policy other than the default"
            ),
            Ok(Outcome::Unsupported) => tracing::info!(
                "this kernel keeps its own scheduler slices (shorter ones need Linux 6.12 or \
                 later)"
            ),
            Err(e) => tracing::warn!("asking for {us} µs scheduler slices failed: {e}"),
        }
        kernels
    }

    /// Call on the same thread once the router runs: what it starts from here on (load
    /// generators, builds, git, PostgreSQL) keeps the kernel's slice, behind requests.
    pub(crate) fn after_router(&self) {
        self.on_thread_start();
    }

    /// The same ask for the threads the Wasm runtime starts for itself.
    pub(crate) fn runtime_thread_start(self) -> skiff_runtime::ThreadStart {
        skiff_runtime::ThreadStart::new(move || self.on_thread_start())
    }

    /// For tokio's `on_thread_start`: the runtime's threads run guests and the API.
    pub(crate) fn on_thread_start(&self) {
        if let Some(slice) = self.slice {
            // Best effort: the outcome was logged once, in `before_router`.
            let _ = request(slice, Inherit::Nothing, self.nice);
        }
    }
}

/// Asks for `slice` on the calling thread, keeping its policy and nice value. `nice`
/// overrides the thread's own (a thread started under reset-on-fork has lost a negative nice).
fn request(slice: Duration, inherit: Inherit, nice: Option<i32>) -> io::Result<Outcome> {
    let mut attr = get()?;
    if attr.policy != SCHED_OTHER {
        return Ok(Outcome::OtherPolicy);
    }
    let want = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    attr.size = size_of::<SchedAttr>() as u32;
    attr.runtime = want;
    attr.flags = match inherit {
        Inherit::Threads => 0,
        Inherit::Nothing => SCHED_FLAG_RESET_ON_FORK,
    };
    let own_nice = attr.nice;
    if let Some(n) = nice {
        attr.nice = n;
    }
    if let Err(e) = set(&attr) {
        // Raising priority back to a negative nice needs the privilege the operator had;
        // without it, keep the thread's own.
        if attr.nice == own_nice {
            return Err(e);
        }
        attr.nice = own_nice;
        set(&attr)?;
    }
    // The kernel holds a slice to its range and, before 6.12, ignores it under SCHED_OTHER
    // (and reports 0); reading back tells which.
    let in_force = want.clamp(SLICE_RANGE_US.0 * 1000, SLICE_RANGE_US.1 * 1000);
    Ok(if get()?.runtime == in_force {
        Outcome::Applied
    } else {
        Outcome::Unsupported
    })
}

/// The calling thread's nice value.
fn nice() -> io::Result<i32> {
    Ok(get()?.nice)
}

#[allow(
    unsafe_code,
    reason = "sched_getattr has no safe wrapper; the buffer is a repr(C) struct of the size passed"
)]
fn get() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = size_of::<SchedAttr>() as libc::c_uint;
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0 as libc::pid_t,
            &mut attr as *mut SchedAttr,
            size,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[allow(
    unsafe_code,
    reason = "sched_setattr has no safe wrapper; the kernel reads a repr(C) struct whose size field is set"
)]
fn set(attr: &SchedAttr) -> io::Result<()> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0 as libc::pid_t,
            attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice_of_this_thread() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split_whitespace().last()?.parse().ok()
    }

    #[test]
    fn a_thread_gets_its_slice_and_passes_it_on_only_when_asked() -> anyhow::Result<()> {
        let outcome = std::thread::spawn(|| -> anyhow::Result<_> {
            let kernels = get()?.runtime;
            let nice = nice()?;
            let outcome = request(Duration::from_micros(100), Inherit::Threads, None)?;
            if outcome != Outcome::Applied {
                return Ok((outcome, None));
            }
            assert_eq!(get()?.runtime, 100_000);
            assert_eq!(super::nice()?, nice, "the nice value is kept");
            let child = std::thread::spawn(|| get().map(|a| a.runtime)).join();
            let inherited = child.map_err(|_| anyhow::anyhow!("thread panicked"))??;
            request(Duration::from_micros(200), Inherit::Nothing, None)?;
            let child = std::thread::spawn(|| get().map(|a| a.runtime)).join();
            let reset = child.map_err(|_| anyhow::anyhow!("thread panicked"))??;
            Ok((
                outcome,
                Some((kernels, inherited, reset, slice_of_this_thread())),
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))??;
        match outcome {
            (Outcome::Applied, Some((kernels, inherited, reset, shown))) => {
                assert_eq!(inherited, 100_000, "threads inherit the slice");
                assert_ne!(kernels, 200_000);
                assert_eq!(
                    reset, kernels,
                    "under reset-on-fork, threads get the kernel's"
                );
                // Where the kernel shows it (CONFIG_SCHED_DEBUG), the slice is in force.
                if let Some(shown) = shown {
                    assert_eq!(shown, 200_000);
                }
            }
            (other, _) => eprintln!("custom slices not available here: {other:?}"),
        }
        Ok(())
    }
}

//! `skiff bench density`: how many web dynos one host holds, and what they cost
//! (`skiff bench router` lives in bench_router.rs, `skiff bench serve` in bench_serve.rs,
//! `skiff bench chaos` in bench_chaos.rs, `skiff bench isolation` and `skiff bench load` in
//! bench_isolation.rs and bench_load.rs).
//!
//! It runs the runtime alone, in this process: builds (or takes) a hello-world component,
//! starts N dynos of it per step, sends each one request, then loads them all, and prints a
//! table (and with `--json`, one JSON object per step as the last lines).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use skiff_runtime::{DynoSpec, Limits, LogSink, OutboundPolicy, Runtime, RuntimeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
enum BenchWhat {
    /// The router against a static upstream on loopback, direct vs routed (and nginx).
    Router(crate::bench_router::RouterBenchArgs),
    /// The runtime against `wasmtime serve` on the same component (and through the router).
    Serve(crate::bench_serve::ServeBenchArgs),
    /// Kill -9 the platform at random points of deploys, config changes and scales, restart
    /// it, and check that nothing acknowledged was lost and nothing half-done is used.
    Chaos(crate::bench_chaos::ChaosArgs),
    /// A calm app's latency alone and while a hostile app on the same host attacks.
    Isolation(crate::bench_isolation::IsolationBenchArgs),
    /// N apps x M dynos under traffic while releases are pushed and apps scaled.
    Load(crate::bench_load::LoadBenchArgs),
    /// A Pingora proxy with none of Skiff's routing, the router bench's peer; runs until killed.
    #[command(hide = true)]
    BareProxy {
        #[arg(long)]
        upstream: std::net::SocketAddr,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        run_dir: PathBuf,
    },
    /// Start N dynos per step and measure memory, instantiation and request latency.
    Density {
        /// Dyno counts to measure, comma-separated.
        #[arg(long, default_value = "100,1000", value_delimiter = ',')]
        steps: Vec<usize>,
        /// A wasi:http component to serve (default: build examples/rust-hello).
        #[arg(long)]
        component: Option<PathBuf>,
        /// Requests sent with all dynos live, per step.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Allocate instances on demand instead of from the pool.
        #[arg(long)]
        on_demand: bool,
        /// MiB of each freed pool slot kept resident, as `skiff up --keep-resident-mib` (0:
        /// every freed slot goes back to the kernel).
        #[arg(long, default_value_t = skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES >> 20)]
        keep_resident_mib: usize,
        /// Also print one JSON object per step.
        #[arg(long)]
        json: bool,
    },
}

struct Quiet;

impl LogSink for Quiet {
    fn line(&self, _app: &str, _dyno: &str, _text: &str) {}
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        // The router bench starts a router, which must come before any tokio runtime.
        BenchWhat::Router(args) => crate::bench_router::run(args),
        BenchWhat::Serve(args) => crate::bench_serve::run(args),
        BenchWhat::Chaos(args) => crate::bench_chaos::run(args),
        BenchWhat::Isolation(args) => crate::bench_isolation::run(args),
        BenchWhat::Load(args) => crate::bench_load::run(args),
        BenchWhat::BareProxy {
            upstream,
            listen,
            run_dir,
        } => crate::bench_router::bare_proxy(upstream, listen, &run_dir),
        BenchWhat::Density {
            steps,
            component,
            requests,
            on_demand,
            keep_resident_mib,
            json,
        } => {
            let component = match component {
                Some(c) => c,
                None => build_hello()?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let keep_resident_bytes = crate::up::keep_resident_bytes(keep_resident_mib);
            runtime.block_on(density(
                &component,
                &steps,
                requests,
                on_demand,
                keep_resident_bytes,
                json,
            ))
        }
    }
}

/// Asks the kernel to keep idle cores ready to run at once (a PM QoS CPU latency request of
/// 0 µs, held until the returned value drops), unless `may_sleep`; says so when it cannot.
///
/// An idle core of a virtual machine can take milliseconds to wake, and every hand-off
/// between threads on different cores may wait for one: those wake-ups then decide the
/// figures, not the code measured. In the isolation bench they inflated the calm-only
/// baseline most, so an attack that kept the cores busy read cheaper than nothing. The cores
/// poll in the kernel's idle loop instead, where the scheduler still counts them idle; a
/// spinning process at the idle class kept them awake too, but the scheduler then queued
/// Skiff's threads behind each other on the other core.
pub(crate) fn hold_cores_ready(may_sleep: bool) -> IdleCores {
    use std::io::Write;
    if may_sleep {
        return IdleCores(None);
    }
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .and_then(|mut file| file.write_all(&0i32.to_ne_bytes()).map(|()| file));
    match held {
        Ok(file) => IdleCores(Some(file)),
        Err(e) => {
            println!(
                "Idle cores may sleep (/dev/cpu_dma_latency: {e}): on a virtual machine, \
                 their wake-ups can then decide the figures."
            );
            IdleCores(None)
        }
    }
}

/// The CPU latency request of [`hold_cores_ready`], if it was made; it ends when this drops.
pub(crate) struct IdleCores(Option<std::fs::File>);

impl IdleCores {
    pub(crate) fn held_ready(&self) -> bool {
        self.0.is_some()
    }

    /// For a bench's header line: "idle cores held ready" or "idle cores may sleep".
    pub(crate) fn describe(&self) -> &'static str {
        if self.held_ready() {
            "idle cores held ready"
        } else {
            "idle cores may sleep"
        }
    }
}

/// Builds examples/rust-hello for wasm32-wasip2 into target/bench-guest.
pub(crate) fn build_hello() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("examples/rust-hello");
    let target = root.join("target/bench-guest");
    eprintln!("Building examples/rust-hello for wasm32-wasip2...");
    let status = std::process::Command::new("cargo")
        .current_dir(&example)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--bin",
            "rust-hello",
        ])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the sample component failed; pass --component PATH instead");
    }
    Ok(target.join("wasm32-wasip2/release/rust-hello.wasm"))
}

fn rss_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... in pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn get(addr: std::net::SocketAddr) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench.localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(256);
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(16)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")
}

async fn density(
    component: &Path,
    steps: &[usize],
    requests: usize,
    on_demand: bool,
    keep_resident_bytes: usize,
    json: bool,
) -> Result<()> {
    let biggest = steps.iter().copied().max().unwrap_or(100);
    let cache = tempfile::tempdir()?;
    let runtime = Runtime::new(RuntimeConfig {
        pool_instances: (!on_demand).then_some((biggest as u32).clamp(100, 20_000)),
        max_memory_bytes: 256 << 20,
        keep_resident_bytes,
        ..RuntimeConfig::new(cache.path().to_owned())
    })?;
    let loaded = runtime
        .load("bench", component)
        .context("loading the component")?;
    let app_dir = tempfile::tempdir()?;

    // Instantiation alone, on this engine (pooled or on demand).
    let mut inst = Vec::new();
    for _ in 0..1000 {
        inst.push(runtime.time_instantiation(&loaded).await?);
    }
    inst.sort();

    println!(
        "Instances: {}",
        if on_demand {
            "allocated on demand".to_owned()
        } else if runtime.resets_slots_in_place() {
            format!(
                "pooled; a freed slot keeps up to {} MiB resident, its dirty pages reset in place",
                keep_resident_bytes >> 20
            )
        } else {
            "pooled; a freed slot goes back to the kernel".to_owned()
        }
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "dynos",
        "rss MiB",
        "rss/dyno KiB",
        "inst p50",
        "inst p99",
        "first p50",
        "first p99",
        "req/s"
    );
    let mut results = Vec::new();
    for &n in steps {
        let before = rss_bytes();
        let mut dynos = Vec::with_capacity(n);
        for i in 0..n {
            let spec = DynoSpec {
                app: "bench".into(),
                name: format!("web.{}", i + 1),
                release: 1,
                component: loaded.clone(),
                env: Vec::new(),
                args: Vec::new(),
                app_dir: app_dir.path().to_owned(),
                tmp_dir: None,
                limits: Limits::default(),
                outbound: Arc::new(OutboundPolicy::Closed),
                log: Arc::new(Quiet),
            };
            match runtime.start_web_dyno(spec).await {
                Ok(d) => dynos.push(d),
                Err(e) => {
                    eprintln!(
                        "stopped at {} dynos: {e} (raise `ulimit -n` for more)",
                        dynos.len()
                    );
                    break;
                }
            }
        }
        let live = dynos.len();
        // Every dyno serves its first request: its cold path.
        let mut first = Vec::with_capacity(live);
        for d in &dynos {
            let t = Instant::now();
            let status = get(d.addr).await?;
            first.push(t.elapsed());
            if status != 200 {
                bail!("{} answered {status}", d.name);
            }
        }
        first.sort();
        let after = rss_bytes();
        // Then a bounded load spread over all of them from 16 concurrent clients.
        let addrs: Arc<Vec<_>> = Arc::new(dynos.iter().map(|d| d.addr).collect());
        let started = Instant::now();
        let per_client = requests.div_ceil(16);
        let mut clients = Vec::new();
        for c in 0..16 {
            let addrs = addrs.clone();
            clients.push(tokio::spawn(async move {
                let mut ok = 0usize;
                for r in 0..per_client {
                    let addr = addrs[(c * per_client + r) % addrs.len()];
                    if matches!(get(addr).await, Ok(200)) {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut served = 0;
        for c in clients {
            served += c.await.unwrap_or(0);
        }
        let rps = served as f64 / started.elapsed().as_secs_f64();
        let rss_per = after.saturating_sub(before) / live.max(1) as u64;
        println!(
            "{:>8} {:>10.1} {:>12.1} {:>8}µs {:>8}µs {:>10}µs {:>10}µs {:>10.0}",
            live,
            after as f64 / (1 << 20) as f64,
            rss_per as f64 / 1024.0,
            percentile(&inst, 0.5).as_micros(),
            percentile(&inst, 0.99).as_micros(),
            percentile(&first, 0.5).as_micros(),
            percentile(&first, 0.99).as_micros(),
            rps
        );
        results.push(serde_json::json!({
            "dynos_live": live,
            "rss_bytes": after,
            "rss_bytes_per_dyno": rss_per,
            "instantiate_p50_us": percentile(&inst, 0.5).as_micros() as u64,
            "instantiate_p99_us": percentile(&inst, 0.99).as_micros() as u64,
            "first_request_p50_us": percentile(&first, 0.5).as_micros() as u64,
            "first_request_p99_us": percentile(&first, 0.99).as_micros() as u64,
            "req_per_s": rps.round() as u64,
            "allocator": if on_demand { "on-demand" } else { "pooling" },
            "keep_resident_bytes": if on_demand { 0 } else { keep_resident_bytes },
        }));
        for d in &dynos {
            d.stop();
        }
    }
    if json {
        for r in results {
            println!("{r}");
        }
    }
    Ok(())
}

//! `skiff bench serve`: Skiff's runtime against `wasmtime serve` on the same component, in
//! the same run, with the same load generator (the one `skiff bench router` uses).
//!
//! Rows: `wasmtime serve` (a fresh instance per request, its default for wasi:http 0.2), a
//! Skiff dyno alone, the router in front of that dyno (what an app's client meets), and both
//! runtimes with instance reuse. Ratios are against `wasmtime serve`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use skiff_router::{Backend, RouteTable};
use skiff_runtime::{DynoSpec, Limits, LogSink, OutboundPolicy, Runtime, RuntimeConfig};

use crate::bench_router::{Stats, free_addr, measure, ms, ratio, secs, start_router, wait_for};

#[derive(clap::Args, Debug)]
pub(crate) struct ServeBenchArgs {
    /// Seconds of load per target (1 to 60).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent keep-alive connections (1 to 64).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// A wasi:http component to serve (default: build examples/rust-hello).
    #[arg(long)]
    component: Option<PathBuf>,
    /// The `wasmtime` binary to compare with; its version should match Skiff's wasmtime.
    #[arg(long, default_value = "wasmtime")]
    wasmtime: PathBuf,
    /// Requests per instance for the instance-reuse rows (2 or more).
    #[arg(long, default_value_t = 16)]
    reuse: u32,
    /// Let idle cores sleep as this machine is set up to, instead of holding them ready to run
    /// (which needs write access to /dev/cpu_dma_latency).
    #[arg(long)]
    cores_may_sleep: bool,
}

struct Quiet;

impl LogSink for Quiet {
    fn line(&self, _app: &str, _dyno: &str, _text: &str) {}
}

/// A `wasmtime serve` child, killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wasmtime_serve(
    wasmtime: &PathBuf,
    component: &PathBuf,
    reuse: u32,
) -> Result<(Peer, std::net::SocketAddr)> {
    let addr = free_addr()?;
    let child = Command::new(wasmtime)
        .arg("serve")
        .arg("--addr")
        .arg(addr.to_string())
        // The sample reads its environment and writes a log line per request: wasi:cli.
        .arg("-Scli")
        .arg(format!("--max-instance-reuse-count={reuse}"))
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} serve", wasmtime.display()))?;
    let peer = Peer(child);
    wait_for(addr)?;
    Ok((peer, addr))
}

fn wasmtime_version(wasmtime: &PathBuf) -> Option<String> {
    let out = Command::new(wasmtime).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) fn run(args: ServeBenchArgs) -> Result<()> {
    let seconds = args.seconds.clamp(1, 60);
    let connections = args.connections.clamp(1, 64);
    let reuse = args.reuse.max(2);
    let duration = Duration::from_secs(seconds);
    let Some(version) = wasmtime_version(&args.wasmtime) else {
        bail!(
            "`{} --version` failed: install the peer with `cargo install wasmtime-cli --version {}` or pass --wasmtime PATH",
            args.wasmtime.display(),
            skiff_runtime::WASMTIME_VERSION
        );
    };
    let component = match args.component {
        Some(c) => c,
        None => crate::bench::build_hello()?,
    };

    // The router owns its runtimes, so it starts before the dynos' tokio runtime.
    let table = Arc::new(RouteTable::new("localhost"));
    let (router, listen, run_dir) = start_router(table.clone())?;

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cache = tempfile::tempdir()?;
    let app_dir = tempfile::tempdir()?;
    let runtime = Runtime::new(RuntimeConfig {
        pool_instances: Some(1000),
        max_memory_bytes: 256 << 20,
        ..RuntimeConfig::new(cache.path().to_owned())
    })?;
    let loaded = runtime
        .load("bench", &component)
        .context("loading the component")?;
    let spec = |name: &str, env: Vec<(String, String)>| DynoSpec {
        app: "bench".into(),
        name: name.into(),
        release: 1,
        component: loaded.clone(),
        env,
        args: Vec::new(),
        app_dir: app_dir.path().to_owned(),
        tmp_dir: None,
        limits: Limits {
            concurrency: 1000,
            ..Limits::default()
        },
        outbound: Arc::new(OutboundPolicy::Closed),
        log: Arc::new(Quiet),
    };
    let fresh = tokio.block_on(runtime.start_web_dyno(spec("web.1", Vec::new())))?;
    let reusing = tokio.block_on(runtime.start_web_dyno(spec(
        "web.2",
        vec![("SKIFF_INSTANCE_REUSE".into(), reuse.to_string())],
    )))?;
    table.set_app(
        "bench",
        vec![Backend {
            dyno: "web.1".into(),
            addr: fresh.addr,
        }],
    );

    let awake = crate::bench::hold_cores_ready(args.cores_may_sleep);
    println!(
        "Load: {connections} keep-alive connections, {seconds}s per target, GET / of {} on 127.0.0.1; peer: {version}; {}",
        component.display(),
        awake.describe()
    );
    let mut rows: Vec<(String, Stats)> = Vec::new();
    {
        let (_peer, addr) = wasmtime_serve(&args.wasmtime, &component, 1)?;
        rows.push((
            "wasmtime serve".into(),
            measure(addr, "bench", connections, duration)?,
        ));
    }
    rows.push((
        "skiff dyno".into(),
        measure(fresh.addr, "bench.localhost", connections, duration)?,
    ));
    rows.push((
        "skiff router+dyno".into(),
        measure(listen, "bench.localhost", connections, duration)?,
    ));
    {
        let (_peer, addr) = wasmtime_serve(&args.wasmtime, &component, reuse)?;
        rows.push((
            format!("wasmtime reuse={reuse}"),
            measure(addr, "bench", connections, duration)?,
        ));
    }
    rows.push((
        format!("skiff reuse={reuse}"),
        measure(reusing.addr, "bench.localhost", connections, duration)?,
    ));
    fresh.stop();
    reusing.stop();
    router.shutdown();
    let _ = std::fs::remove_dir_all(&run_dir);

    println!();
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>8}",
        "target", "req/s", "p50", "p99", "errors"
    );
    for (name, s) in &rows {
        println!(
            "{:<20} {:>10.0} {:>10} {:>10} {:>8}",
            name,
            s.rate(),
            ms(s.percentile(50)),
            ms(s.percentile(99)),
            s.errors
        );
    }
    println!();
    println!(
        "{:<36} {:>9} {:>9}",
        "ratio (Skiff / wasmtime serve)", "req/s", "p99"
    );
    let pairs = [(1, 0), (2, 0), (4, 3)];
    for (ours, peer) in pairs {
        let (name, s) = &rows[ours];
        let (_, p) = &rows[peer];
        println!(
            "{:<36} {:>8.2}x {:>8.2}x",
            name,
            ratio(s.rate(), p.rate()),
            ratio(secs(s.percentile(99)), secs(p.percentile(99))),
        );
    }
    if cfg!(debug_assertions) {
        println!(
            "(a debug build: for representative numbers run `cargo run --release -p skiff -- bench serve`)"
        );
    }
    Ok(())
}

//! `skiff bench serve`: Skiff's runtime against `wasmtime serve` on the same component, in
//! the same run, with the same load generator (the one `skiff bench router` uses).
//!
//! Rows: `wasmtime serve` (a fresh instance per request, its default for wasi:http 0.2) as it
//! comes and tuned to reset its pool slots the way Skiff does, a Skiff dyno alone, the router
//! in front of that dyno (what an app's client meets), a dyno whose freed slots go back to the
//! kernel whole (Skiff before it kept them resident), and both runtimes with instance reuse.

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
    #[command(flatten)]
    slice: crate::sched::BenchSlice,
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
    tuned: bool,
) -> Result<(Peer, std::net::SocketAddr)> {
    let addr = free_addr()?;
    let mut command = Command::new(wasmtime);
    command.arg("serve");
    if tuned {
        // The peer given what Skiff's pool does by default, so the rows compare runtimes
        // and not one setting.
        let keep = skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES;
        command.args([
            "-Opooling-allocator=y".to_owned(),
            "-Opooling-pagemap-scan=auto".to_owned(),
            format!("-Opooling-memory-keep-resident={keep}"),
            format!("-Opooling-table-keep-resident={keep}"),
        ]);
    }
    let child = command
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
    let serving = crate::sched::Serving::new(args.slice.micros);
    let slices = serving.before_router();
    let (router, listen, run_dir) = start_router(table.clone())?;
    serving.after_router();

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || serving.on_thread_start())
        .build()?;
    let cache = tempfile::tempdir()?;
    let app_dir = tempfile::tempdir()?;
    let pooled = |keep_resident_bytes| {
        Runtime::new(RuntimeConfig {
            pool_instances: Some(1000),
            max_memory_bytes: 256 << 20,
            keep_resident_bytes,
            thread_start: Some(serving.runtime_thread_start()),
            ..RuntimeConfig::new(cache.path().to_owned())
        })
    };
    // As `skiff up` sets it up, and a peer that hands every freed slot back to the kernel.
    let runtime = pooled(skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES)?;
    let decommitting = pooled(0)?;
    let loaded = runtime
        .load("bench", &component)
        .context("loading the component")?;
    let loaded_decommitting = decommitting
        .load("bench", &component)
        .context("loading the component")?;
    let spec = |name: &str,
                component: &skiff_runtime::LoadedComponent,
                env: Vec<(String, String)>| DynoSpec {
        app: "bench".into(),
        name: name.into(),
        release: 1,
        component: component.clone(),
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
    let fresh = tokio.block_on(runtime.start_web_dyno(spec("web.1", &loaded, Vec::new())))?;
    let reusing = tokio.block_on(runtime.start_web_dyno(spec(
        "web.2",
        &loaded,
        vec![("SKIFF_INSTANCE_REUSE".into(), reuse.to_string())],
    )))?;
    let fresh_decommitting = tokio.block_on(decommitting.start_web_dyno(spec(
        "web.3",
        &loaded_decommitting,
        Vec::new(),
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
        "Load: {connections} keep-alive connections, {seconds}s per target, GET / of {} on 127.0.0.1; peer: {version}; {}; Skiff's router and dynos at {slices}",
        component.display(),
        awake.describe()
    );
    println!(
        "Freed instance slots: {}",
        if runtime.resets_slots_in_place() {
            format!(
                "dirty pages reset in place, up to {} MiB kept (PAGEMAP_SCAN); `madvise` row: handed back to the kernel",
                skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES >> 20
            )
        } else {
            "handed back to the kernel in both Skiff rows (this kernel lacks PAGEMAP_SCAN)"
                .to_owned()
        }
    );
    let mut rows: Vec<(String, Stats)> = Vec::new();
    {
        let (_peer, addr) = wasmtime_serve(&args.wasmtime, &component, 1, false)?;
        rows.push((
            "wasmtime serve".into(),
            measure(addr, "bench", connections, duration)?,
        ));
    }
    {
        let (_peer, addr) = wasmtime_serve(&args.wasmtime, &component, 1, true)?;
        rows.push((
            "wasmtime serve, tuned".into(),
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
    rows.push((
        "skiff dyno, madvise".into(),
        measure(
            fresh_decommitting.addr,
            "bench.localhost",
            connections,
            duration,
        )?,
    ));
    {
        let (_peer, addr) = wasmtime_serve(&args.wasmtime, &component, reuse, false)?;
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
    fresh_decommitting.stop();
    router.shutdown();
    let _ = std::fs::remove_dir_all(&run_dir);

    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>8}",
        "target", "req/s", "p50", "p99", "errors"
    );
    for (name, s) in &rows {
        println!(
            "{:<22} {:>10.0} {:>10} {:>10} {:>8}",
            name,
            s.rate(),
            ms(s.percentile(50)),
            ms(s.percentile(99)),
            s.errors
        );
    }
    println!();
    println!("{:<48} {:>9} {:>9}", "ratio (Skiff / peer)", "req/s", "p99");
    let pairs = [(2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (6, 5)];
    for (ours, peer) in pairs {
        let (name, s) = &rows[ours];
        let (peer_name, p) = &rows[peer];
        println!(
            "{:<48} {:>8.2}x {:>8.2}x",
            format!("{name} / {peer_name}"),
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

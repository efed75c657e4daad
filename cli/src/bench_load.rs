//! `skiff bench load`: N apps x M web dynos under steady traffic through the router while a
//! driver pushes new releases and scales the apps up and down. Every answer is counted by
//! status and Skiff code; the run fails if any request failed outside the documented codes,
//! since a deploy or a scale must not drop requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::bench_host::{
    Client, Counts, Host, add_counts, describe_counts, loadavg, percentile_ms,
};

#[derive(clap::Args, Debug)]
pub(crate) struct LoadBenchArgs {
    /// Apps (1 to 50).
    #[arg(long, default_value_t = 4)]
    apps: usize,
    /// Web dynos per app (1 to 20); the driver scales between this and one more.
    #[arg(long, default_value_t = 2)]
    dynos: usize,
    /// Seconds of traffic (2 to 600).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent keep-alive connections (1 to 64), spread over the apps.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Also print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What the driver did meanwhile.
#[derive(Default)]
struct Driven {
    deploys: Vec<Duration>,
    scales: Vec<Duration>,
    errors: Vec<String>,
}

pub(crate) fn run(args: LoadBenchArgs) -> Result<()> {
    let apps = args.apps.clamp(1, 50);
    let dynos = args.dynos.clamp(1, 20);
    let seconds = args.seconds.clamp(2, 600);
    let connections = args.connections.clamp(1, 64);

    let host = Host::start(&[])?;
    // The static-site buildpack builds its file server once per machine, so every push
    // after the first costs a slug and a dyno start, not a compiler.
    let mut repos: Vec<(String, PathBuf)> = Vec::new();
    for i in 1..=apps {
        let app = format!("load{i}");
        let repo = host.example_repo(&app, "static-hello")?;
        std::fs::write(repo.join("release.txt"), "0\n")?;
        host.create_and_push(&repo, &app, &[])?;
        host.cli(&repo, &["ps:scale", &format!("web={dynos}")])?;
        repos.push((app, repo));
    }
    let router = host.router();
    let hosts: Vec<String> = repos
        .iter()
        .map(|(app, _)| format!("{app}.localhost:{}", host.http_port))
        .collect();
    for h in &hosts {
        let outcome = Client::new(router, Duration::from_secs(30)).send(h, "GET", "/", b"");
        if !outcome.ok() {
            bail!(
                "{h} answered {}; platform log:\n{}",
                outcome.label(),
                host.log_tail(30)
            );
        }
    }

    println!(
        "Load: {apps} apps x {dynos} web dynos (static-hello), {connections} keep-alive connections, {seconds} s, \
         while a driver deploys and scales; load average at start {}",
        loadavg()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let traffic: Vec<_> = (0..connections)
        .map(|c| {
            let hosts = hosts.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(router, Duration::from_secs(30));
                let mut counts = Counts::new();
                let mut latencies = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let h = &hosts[i % hosts.len()];
                    i += 1;
                    let sent = Instant::now();
                    let outcome = client.send(h, "GET", "/", b"");
                    if outcome.ok() {
                        latencies.push(sent.elapsed());
                    }
                    *counts.entry(outcome).or_default() += 1;
                }
                (counts, latencies)
            })
        })
        .collect();

    // The driver: a release, then a scale, app after app, until the time is up; at least
    // one of each however slow the machine, with traffic running until it is done.
    let deadline = started + Duration::from_secs(seconds);
    let mut driven = Driven::default();
    let mut step = 0usize;
    while step < 2 || Instant::now() + Duration::from_millis(500) < deadline {
        let (app, repo) = &repos[(step / 2) % repos.len()];
        let t = Instant::now();
        let result = if step.is_multiple_of(2) {
            std::fs::write(repo.join("release.txt"), format!("{step}\n"))?;
            host.push(repo, &format!("release {step}")).map(|_| true)
        } else {
            // Up by one on odd rounds through the apps, back down on even ones.
            let up = (step / (2 * repos.len())).is_multiple_of(2);
            let quantity = if up { dynos + 1 } else { dynos };
            host.cli(repo, &["ps:scale", &format!("web={quantity}")])
                .map(|_| false)
        };
        match result {
            Ok(true) => driven.deploys.push(t.elapsed()),
            Ok(false) => driven.scales.push(t.elapsed()),
            Err(e) => driven.errors.push(format!("{app}: {e:#}")),
        }
        step += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    stop.store(true, Ordering::Relaxed);
    let mut counts = Counts::new();
    let mut latencies = Vec::new();
    for t in traffic {
        if let Ok((c, l)) = t.join() {
            add_counts(&mut counts, &c);
            latencies.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();

    let total: u64 = counts.values().sum();
    let ok: u64 = counts.iter().filter(|(k, _)| k.ok()).map(|(_, v)| v).sum();
    let documented: u64 = counts
        .iter()
        .filter(|(k, _)| !k.ok() && k.documented())
        .map(|(_, v)| v)
        .sum();
    let undocumented = total - ok - documented;
    let mean = |d: &[Duration]| {
        if d.is_empty() {
            0.0
        } else {
            d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len() as f64
        }
    };
    println!();
    println!("{:<40} {:>10}", "answer", "requests");
    for (outcome, n) in &counts {
        println!("{:<40} {:>10}", outcome.label(), n);
    }
    println!(
        "req/s held: {:.0} ({total} requests in {elapsed:.1} s; p50 {:.2} ms, p99 {:.2} ms of the 200s)",
        total as f64 / elapsed,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99)
    );
    println!(
        "driver: {} deploys (mean push {:.2} s), {} scales (mean {:.2} s), {} driver errors",
        driven.deploys.len(),
        mean(&driven.deploys),
        driven.scales.len(),
        mean(&driven.scales),
        driven.errors.len()
    );
    println!(
        "failed: {} (documented codes {documented}, undocumented {undocumented})",
        total - ok
    );
    for e in &driven.errors {
        println!("driver error: {e}");
    }
    if cfg!(debug_assertions) {
        println!(
            "(a debug build: for representative numbers run `cargo run --release -p skiff -- bench load`)"
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "apps": apps,
                "dynos": dynos,
                "connections": connections,
                "seconds": elapsed,
                "requests": total,
                "ok": ok,
                "failed": total - ok,
                "documented": documented,
                "undocumented": undocumented,
                "req_per_s": total as f64 / elapsed,
                "p50_ms": percentile_ms(&latencies, 0.50),
                "p99_ms": percentile_ms(&latencies, 0.99),
                "deploys": driven.deploys.len(),
                "scales": driven.scales.len(),
                "driver_errors": driven.errors,
                "answers": describe_counts(&counts),
            })
        );
    }
    if undocumented > 0 || !driven.errors.is_empty() {
        bail!(
            "{undocumented} requests failed outside the documented codes, {} driver errors; platform log:\n{}",
            driven.errors.len(),
            host.log_tail(30)
        );
    }
    Ok(())
}

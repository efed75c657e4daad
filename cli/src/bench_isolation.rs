//! `skiff bench isolation`: how much one app's attacks cost another app's latency. A private
//! `skiff up` serves a calm app (examples/rust-hello) and the hostile fixture
//! (tests/fixtures/hostile, on an eco dyno), both deployed through git as prebuilt components.
//! The calm app gets a paced load alone, then again while each attack runs on the hostile
//! app; the table shows the calm app's p50 and p99, the p99 against the baseline, the calm
//! app's failures and what the hostile app's clients got.
//!
//! Every client runs on this machine, but an attacker's would run on another: the attack's
//! threads run at a low priority (`--attacker-nice`), so that what the table shows is Skiff's
//! own cost of each attack rather than the load generator's. A control row runs two threads
//! that only spin and never talk to Skiff: it is the floor this machine sets.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench_host::{
    Client, Counts, Host, Outcome, Paced, add_counts, build_guest, describe_counts, loadavg,
    paced_load, percentile_ms,
};

#[derive(clap::Args, Debug)]
pub(crate) struct IsolationBenchArgs {
    /// Calm requests per phase (100 to 100000).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// The calm app's request rate, per second (10 to 5000).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Concurrent calm connections (1 to 64).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Run only the attacks whose names contain one of these words (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also print one JSON object per attack.
    #[arg(long)]
    json: bool,
    /// Niceness of the attack's client threads (0 to 19); 0 lets them take this machine's
    /// cores from Skiff and the calm clients as equals.
    #[arg(long, default_value_t = 19)]
    attacker_nice: i32,
    /// Baseline/attack pairs per attack (1 to 15); the table shows the pair with the median
    /// ratio (the upper one of the middle two for an even count).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Let idle cores sleep as this machine is set up to, instead of holding them ready to run
    /// (which needs write access to /dev/cpu_dma_latency).
    #[arg(long)]
    cores_may_sleep: bool,
    /// Microseconds of scheduler slice the private `skiff up` asks for on its router's and
    /// runtime's threads (`skiff up --sched-slice-us`; 0: the kernel's). The bench's own
    /// clients keep the kernel's.
    #[arg(long, env = "SKIFF_SCHED_SLICE_US", default_value_t = 100)]
    sched_slice_us: u64,
}

/// The hostile app's request deadline: long enough that its loops hold cores for a while.
const HOSTILE_TIMEOUT: &str = "SKIFF_REQUEST_TIMEOUT=5";

#[derive(Clone, Copy)]
enum Attack {
    Loop(usize),
    Grow(usize),
    Flood(usize),
    Huge(usize),
    Stalled(usize),
    Upload(usize),
    SlowBody(usize),
    AtCapacity(usize),
    /// The control: threads that spin without touching Skiff.
    Spin(usize),
}

impl Attack {
    fn all() -> Vec<Attack> {
        vec![
            Attack::Loop(4),
            Attack::Grow(2),
            Attack::Flood(2),
            Attack::Huge(2),
            Attack::Stalled(12),
            Attack::Upload(2),
            Attack::SlowBody(20),
            Attack::AtCapacity(16),
            Attack::Spin(2),
        ]
    }

    fn name(self) -> String {
        match self {
            Attack::Loop(n) => format!("busy loop x{n}"),
            Attack::Grow(n) => format!("memory bomb x{n}"),
            Attack::Flood(n) => format!("log flood x{n}"),
            Attack::Huge(n) => format!("256 MiB body x{n}"),
            Attack::Stalled(n) => format!("stalled reader x{n}"),
            Attack::Upload(n) => format!("ignored upload x{n}"),
            Attack::SlowBody(n) => format!("slow body x{n}"),
            Attack::AtCapacity(n) => format!("at capacity x{n}"),
            Attack::Spin(n) => format!("control: spin x{n}"),
        }
    }

    /// Starts the attack's clients; each returns what it got once `stop` is set.
    fn start(
        self,
        router: SocketAddr,
        host: &str,
        stop: &Arc<AtomicBool>,
        nice: i32,
    ) -> Vec<Worker> {
        let spawn = |n: usize, f: fn(SocketAddr, &str, &AtomicBool) -> Counts| {
            (0..n)
                .map(|_| {
                    let host = host.to_owned();
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        // Linux keeps niceness per thread, and the threads this one starts
                        // (the upload's sender) inherit it.
                        if let Err(e) = rustix::process::setpriority_process(
                            Some(rustix::thread::gettid()),
                            nice,
                        ) {
                            tracing::warn!(error = %e, "attack thread keeps its priority");
                        }
                        f(router, &host, &stop)
                    })
                })
                .collect::<Vec<_>>()
        };
        match self {
            Attack::Loop(n) | Attack::AtCapacity(n) => spawn(n, |r, h, s| repeat(r, h, s, "/loop")),
            Attack::Grow(n) => spawn(n, |r, h, s| repeat(r, h, s, "/grow")),
            Attack::Flood(n) => spawn(n, |r, h, s| repeat(r, h, s, "/flood")),
            Attack::Huge(n) => spawn(n, |r, h, s| repeat(r, h, s, "/huge")),
            Attack::Stalled(n) => spawn(n, stalled_reader),
            Attack::Upload(n) => spawn(n, ignored_upload),
            Attack::SlowBody(n) => spawn(n, slow_body),
            Attack::Spin(n) => spawn(n, spin),
        }
    }
}

type Worker = JoinHandle<Counts>;

/// Sends `path` again and again on a keep-alive connection until `stop`.
fn repeat(router: SocketAddr, host: &str, stop: &AtomicBool, path: &str) -> Counts {
    let mut client = Client::new(router, Duration::from_secs(60));
    let mut counts = Counts::new();
    while !stop.load(Ordering::Relaxed) {
        let outcome = client.send(host, "GET", path, b"");
        if matches!(outcome, Outcome::Broken(_)) {
            // Refused or reset: do not spin on a closed port.
            std::thread::sleep(Duration::from_millis(10));
        }
        *counts.entry(outcome).or_default() += 1;
    }
    counts
}

/// Asks for 256 MiB and never reads it, holding the connection until `stop`; asks again
/// when the platform gives up on it.
fn stalled_reader(router: SocketAddr, host: &str, stop: &AtomicBool) -> Counts {
    let mut counts = Counts::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = TcpStream::connect(router) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let request = format!("GET /huge HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if conn.write_all(request.as_bytes()).is_err() {
            continue;
        }
        *counts
            .entry(Outcome::Broken("held unread".into()))
            .or_default() += 1;
        // The router cuts a client that stops reading after its client timeout (30 s).
        let held = Instant::now();
        while !stop.load(Ordering::Relaxed) && held.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    counts
}

/// Sends 32 MiB to a route that answers without reading it, reading the answer meanwhile.
fn ignored_upload(router: SocketAddr, host: &str, stop: &AtomicBool) -> Counts {
    let mut counts = Counts::new();
    while !stop.load(Ordering::Relaxed) {
        let outcome = upload_once(router, host).unwrap_or_else(|e| Outcome::Broken(e.to_string()));
        *counts.entry(outcome).or_default() += 1;
    }
    counts
}

fn upload_once(router: SocketAddr, host: &str) -> Result<Outcome> {
    let conn = TcpStream::connect(router)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = conn.try_clone()?;
    let head = format!(
        "POST /ignore-body HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        32 << 20
    );
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'u'; 64 << 10];
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..512 {
            // Refused once the app has answered and the router hung up: expected.
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let outcome = read_status(conn);
    let _ = sender.join();
    outcome
}

/// Keeps a core busy without a system call until `stop`.
fn spin(_: SocketAddr, _: &str, stop: &AtomicBool) -> Counts {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    Counts::new()
}

/// Trickles a 100 KB body, 10 bytes every 200 ms, to a route that waits for all of it.
fn slow_body(router: SocketAddr, host: &str, stop: &AtomicBool) -> Counts {
    let mut counts = Counts::new();
    while !stop.load(Ordering::Relaxed) {
        let outcome = match trickle_once(router, host, stop) {
            Ok(Some(o)) => o,
            Ok(None) => break,
            Err(e) => Outcome::Broken(e.to_string()),
        };
        *counts.entry(outcome).or_default() += 1;
    }
    counts
}

fn trickle_once(router: SocketAddr, host: &str, stop: &AtomicBool) -> Result<Option<Outcome>> {
    let mut conn = TcpStream::connect(router)?;
    let head = format!(
        "POST /body HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n"
    );
    conn.write_all(head.as_bytes())?;
    conn.set_nonblocking(true)?;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // An answer (or a hang-up) ends the trickle.
        let mut peek = [0u8; 1];
        match conn.peek(&mut peek) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if conn.write_all(b"0123456789").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    read_status(conn).map(Some)
}

/// Reads the status line and Skiff's code of an answer on a connection that closes after it.
fn read_status(conn: TcpStream) -> Result<Outcome> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let mut rest = Vec::new();
    let _ = reader.take(64 << 10).read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    let code = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("skiff-error:")
                .map(|c| c.trim().to_ascii_uppercase())
        })
        .or_else(|| crate::bench_host::page_code(&rest));
    Ok(Outcome::Answer(
        status,
        if status >= 400 { code } else { None },
    ))
}

/// One baseline/attack pair's percentiles, in milliseconds.
struct Pair {
    base_p50: f64,
    base_p99: f64,
    p50: f64,
    p99: f64,
    ratio: f64,
}

impl Pair {
    fn new(base: &Paced, calm: &Paced) -> Pair {
        let base_p99 = percentile_ms(&base.latencies, 0.99);
        let p99 = percentile_ms(&calm.latencies, 0.99);
        Pair {
            base_p50: percentile_ms(&base.latencies, 0.50),
            base_p99,
            p50: percentile_ms(&calm.latencies, 0.50),
            p99,
            ratio: if base_p99 > 0.0 { p99 / base_p99 } else { 0.0 },
        }
    }
}

/// Asks the hostile app for `/ok` every 100 ms: what its well-behaved clients get meanwhile.
fn probe(router: SocketAddr, host: String, stop: Arc<AtomicBool>) -> Worker {
    std::thread::spawn(move || {
        let mut counts = Counts::new();
        while !stop.load(Ordering::Relaxed) {
            let mut client = Client::new(router, Duration::from_secs(30));
            let outcome = client.send(&host, "GET", "/ok", b"");
            *counts.entry(outcome).or_default() += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        counts
    })
}

pub(crate) fn run(args: IsolationBenchArgs) -> Result<()> {
    let requests = args.requests.clamp(100, 100_000);
    let rate = args.rate.clamp(10, 5000);
    let connections = args.connections.clamp(1, 64);
    let nice = args.attacker_nice.clamp(0, 19);
    let repeats = args.repeats.clamp(1, 15);
    let calm_wasm = build_guest("examples/rust-hello", "rust-hello")?;
    let hostile_wasm = build_guest("tests/fixtures/hostile", "hostile")?;

    let host = Host::start(&["--sched-slice-us", &args.sched_slice_us.to_string()])?;
    let slices = match crate::sched::in_force_us(args.sched_slice_us) {
        None => "the kernel's".to_owned(),
        Some(us) if host.logged(crate::sched::APPLIED) => format!("{us} µs"),
        Some(_) => "the kernel's (the platform's log says why)".to_owned(),
    };
    let calm_repo = host.prebuilt_repo("calm", &calm_wasm)?;
    host.create_and_push(&calm_repo, "calm", &[])?;
    let hostile_repo = host.prebuilt_repo("hostile", &hostile_wasm)?;
    host.create_and_push(&hostile_repo, "hostile", &[HOSTILE_TIMEOUT])?;
    host.cli(&hostile_repo, &["ps:resize", "web=eco"])?;

    let router = host.router();
    let calm_host = format!("calm.localhost:{}", host.http_port);
    let hostile_host = format!("hostile.localhost:{}", host.http_port);
    let mut check = Client::new(router, Duration::from_secs(30));
    for (h, path) in [(&calm_host, "/"), (&hostile_host, "/ok")] {
        let outcome = check.send(h, "GET", path, b"");
        if !outcome.ok() {
            bail!(
                "{h}{path} answered {}; platform log:\n{}",
                outcome.label(),
                host.log_tail(30)
            );
        }
    }
    let awake = crate::bench::hold_cores_ready(args.cores_may_sleep);
    // Warm both the calm dyno's path and the router's pools before measuring.
    paced_load(router, &calm_host, 200.min(requests), rate, connections);

    println!(
        "Calm app: {requests} GET / per phase at {rate} req/s over {connections} keep-alive connections, \
         {repeats} baseline/attack pairs per attack; \
         hostile app on one eco dyno (10 requests at once, 64 MiB), {HOSTILE_TIMEOUT}; attack clients at nice {nice}; \
         Skiff's threads at {slices} scheduler slices; {}; load average at start {}",
        awake.describe(),
        loadavg()
    );
    let attacks: Vec<Attack> = Attack::all()
        .into_iter()
        .filter(|a| args.only.is_empty() || args.only.iter().any(|w| a.name().contains(w.as_str())))
        .collect();

    // Each attack phase is paired with a baseline measured just before it, so the ratio
    // compares phases a few seconds apart on a machine whose other load drifts. One pair's p99
    // rests on its slowest 1% of requests, so a single stall elsewhere on the machine can
    // decide it: the table reports the median of `repeats` pairs and lists every pair's ratio.
    // "0.00" per pair and a space between.
    let each_width = (repeats * 5).max(10) - 1;
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}  {:<each_width$} hostile app's clients got",
        "attack", "base p50", "base p99", "calm p50", "calm p99", "p99 x", "errors", "each pair"
    );
    let mut rows = Vec::new();
    for attack in attacks {
        let mut pairs = Vec::with_capacity(repeats);
        let mut hostile = Counts::new();
        let mut failures = Counts::new();
        let (mut rss_before, mut rss_after) = (0, 0);
        for _ in 0..repeats {
            let base = paced_load(router, &calm_host, requests, rate, connections);
            let stop = Arc::new(AtomicBool::new(false));
            let mut workers = attack.start(router, &hostile_host, &stop, nice);
            workers.push(probe(router, hostile_host.clone(), stop.clone()));
            // Let the attack reach the dyno before the calm app is measured.
            std::thread::sleep(Duration::from_millis(500));
            rss_before = rss_before.max(host.rss_bytes().unwrap_or(0));
            let calm = paced_load(router, &calm_host, requests, rate, connections);
            rss_after = rss_after.max(host.rss_bytes().unwrap_or(0));
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                if let Ok(c) = w.join() {
                    add_counts(&mut hostile, &c);
                }
            }
            add_counts(&mut failures, &base.failures);
            add_counts(&mut failures, &calm.failures);
            pairs.push(Pair::new(&base, &calm));
            // Let the hostile dyno's stopped guests and cut connections settle between phases.
            std::thread::sleep(Duration::from_secs(1));
        }
        let errors: u64 = failures.values().sum();
        // In the order measured, so a drift across the pairs shows.
        let ratios: Vec<f64> = pairs.iter().map(|p| p.ratio).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        pairs.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
        let Some(median) = pairs.get(pairs.len() / 2) else {
            continue;
        };
        println!(
            "{:<20} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>6.2}x {:>6}  {:<each_width$} {}",
            attack.name(),
            median.base_p50,
            median.base_p99,
            median.p50,
            median.p99,
            median.ratio,
            errors,
            each.join(" "),
            describe_counts(&hostile)
        );
        if errors > 0 {
            println!("{:<20} calm failures: {}", "", describe_counts(&failures));
        }
        rows.push(serde_json::json!({
            "attack": attack.name(),
            "pairs": repeats,
            "idle_cores_held_ready": awake.held_ready(),
            "calm_requests_per_phase": requests,
            "baseline_p50_ms": median.base_p50,
            "baseline_p99_ms": median.base_p99,
            "calm_p50_ms": median.p50,
            "calm_p99_ms": median.p99,
            "p99_ratio": median.ratio,
            "p99_ratios": ratios,
            "calm_errors": errors,
            "hostile": describe_counts(&hostile),
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
        }));
    }
    if cfg!(debug_assertions) {
        println!(
            "(a debug build: for representative numbers run `cargo run --release -p skiff -- bench isolation`)"
        );
    }
    if args.json {
        for r in rows {
            println!("{r}");
        }
    }
    Ok(())
}

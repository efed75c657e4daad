//! `skiff bench router`: what the router costs. A static upstream on loopback is loaded
//! directly, then through a private router, through a bare Pingora proxy (Pingora's defaults,
//! none of Skiff's routing: what the router's framework costs by itself) and through nginx when
//! it is installed (as it comes, and configured to do the router's per-request work too), by
//! the same bounded keep-alive load generator; the table shows req/s, p50 and p99 and the
//! ratios. Each target then runs at a paced rate they all carry, and a second table shows
//! the p50 and p99 each adds to the direct ones.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use skiff_router::{AppSettings, Backend, RouteTable, RouterConfig};

use crate::bench_host::{Paced, paced_load};

#[derive(clap::Args, Debug)]
pub(crate) struct RouterBenchArgs {
    /// Seconds of load per target (1 to 60).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent keep-alive connections (1 to 64).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Let idle cores sleep as this machine is set up to, instead of holding them ready to run
    /// (which needs write access to /dev/cpu_dma_latency).
    #[arg(long)]
    cores_may_sleep: bool,
    #[command(flatten)]
    slice: crate::sched::BenchSlice,
    /// Requests per second of a paced phase after each target's full-speed one, for the
    /// latency each adds at a load they all carry (0 skips it; at most 20000).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
}

const BODY: &[u8] = b"Hello, bench\n";

/// Worker threads of the bench's router and of the bare Pingora peer alike.
const ROUTER_THREADS: usize = 2;

pub(crate) fn run(args: RouterBenchArgs) -> Result<()> {
    let seconds = args.seconds.clamp(1, 60);
    let connections = args.connections.clamp(1, 64);
    let duration = Duration::from_secs(seconds);

    let upstream = serve_static()?;
    // The router owns its runtimes, so it starts before any load thread.
    let table = Arc::new(RouteTable::new("localhost"));
    table.set_app(
        "bench",
        vec![Backend {
            dyno: "web.1".into(),
            addr: upstream,
        }],
    );
    let serving = crate::sched::Serving::new(args.slice.micros);
    let slices = serving.before_router();
    let (router, listen, run_dir) = start_router(table)?;
    serving.after_router();

    let awake = crate::bench::hold_cores_ready(args.cores_may_sleep);
    println!(
        "Load: {connections} keep-alive connections, {seconds}s per target, GET / of a {}-byte static answer on 127.0.0.1; {}; the router at {slices}",
        BODY.len(),
        awake.describe()
    );
    let rate = args.rate.min(20_000);
    // Full speed measures what a target can carry; at full speed its latency is mostly
    // queueing, so what it adds to each request is measured at a paced rate all carry.
    let both = |addr| -> Result<Measured> {
        let full = measure(addr, "bench.localhost", connections, duration)?;
        let paced = (rate > 0).then(|| {
            let requests = usize::try_from(rate.saturating_mul(seconds)).unwrap_or(usize::MAX);
            paced_load(addr, "bench.localhost", requests, rate, connections)
        });
        Ok(Measured { full, paced })
    };
    let direct = both(upstream)?;
    let routed = both(listen)?;
    let routed_rate = routed.full.rate();
    let mut rows = vec![("direct", direct), ("skiff router", routed)];
    // The peers run in processes of their own, started one at a time: each is measured, then
    // stopped.
    type Start = fn(SocketAddr, &Path) -> Result<Option<(Child, SocketAddr)>>;
    let peers: [(&str, Start); 3] = [
        ("bare pingora", |up, dir| bare_pingora(up, dir).map(Some)),
        ("nginx", |up, dir| nginx_proxy(up, dir, false)),
        ("nginx-equiv", |up, dir| nginx_proxy(up, dir, true)),
    ];
    for (name, start) in peers {
        match start(upstream, &run_dir) {
            Ok(Some((mut child, addr))) => {
                let result = wait_for(addr).and_then(|()| both(addr));
                // SIGINT is "shut down now" to both Pingora and nginx. A SIGKILL would reach
                // nginx's master alone: its workers lived on, holding their sockets and cores
                // through every later measurement and after the bench.
                crate::bench_host::interrupt(&mut child, Duration::from_secs(5));
                rows.push((name, result?));
            }
            Ok(None) => {}
            Err(e) => println!("{name}: could not start it ({e:#}); skipped"),
        }
    }
    router.shutdown();
    let _ = std::fs::remove_dir_all(&run_dir);

    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>8}",
        "target", "req/s", "p50", "p99", "errors"
    );
    for (name, Measured { full: s, .. }) in &rows {
        println!(
            "{:<18} {:>10.0} {:>10} {:>10} {:>8}",
            name,
            s.rate(),
            ms(s.percentile(50)),
            ms(s.percentile(99)),
            s.errors
        );
    }
    let (_, Measured { full: d, .. }) = &rows[0];
    for (name, Measured { full: s, .. }) in rows.iter().skip(1) {
        let label = format!("{}/direct", name.split_whitespace().last().unwrap_or(name));
        println!(
            "{:<18} {:>9.2}x {:>9.2}x {:>9.2}x",
            label,
            ratio(s.rate(), d.rate()),
            ratio(secs(s.percentile(50)), secs(d.percentile(50))),
            ratio(secs(s.percentile(99)), secs(d.percentile(99))),
        );
    }
    for (name, Measured { full: s, .. }) in rows.iter().skip(2) {
        let label = format!("router/{}", name.split_whitespace().last().unwrap_or(name));
        println!(
            "{label:<18} {:>9.2}x  (req/s)",
            ratio(routed_rate, s.rate())
        );
    }
    print_paced(&rows, rate, connections);
    if !rows.iter().any(|(name, _)| *name == "nginx") {
        println!("nginx: not installed; skipped the comparison");
    }
    if cfg!(debug_assertions) {
        println!(
            "(a debug build: for representative numbers run `cargo run --release -p skiff -- bench router`)"
        );
    }
    Ok(())
}

/// A target's full-speed phase and its paced one.
struct Measured {
    full: Stats,
    paced: Option<Paced>,
}

/// The paced phases: each target's p50 and p99, and what it adds to the direct ones.
fn print_paced(rows: &[(&str, Measured)], rate: u64, connections: usize) {
    let Some((
        _,
        Measured {
            paced: Some(direct),
            ..
        },
    )) = rows.first()
    else {
        return;
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (d50, d99) = (
        us(percentile(&direct.latencies, 50)),
        us(percentile(&direct.latencies, 99)),
    );
    println!();
    println!(
        "Paced: {rate} req/s over {connections} connections (latency from send to the whole answer)"
    );
    println!(
        "{:<18} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "target", "p50", "p99", "added p50", "added p99", "errors"
    );
    for (name, m) in rows {
        let Some(p) = &m.paced else { continue };
        let (p50, p99) = (
            us(percentile(&p.latencies, 50)),
            us(percentile(&p.latencies, 99)),
        );
        let failed: u64 = p.failures.values().sum();
        println!(
            "{name:<18} {:>8.0}µs {:>8.0}µs {:>10.0}µs {:>10.0}µs {failed:>8}",
            p50,
            p99,
            p50 - d50,
            p99 - d99,
        );
    }
}

/// The `p`th percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted.get(i).copied().unwrap_or_default()
}

/// A private router on a free loopback port for the app `bench` of `table`, with no backlog
/// bound (the load generator decides the load). Returns it, its address and its run dir.
pub(crate) fn start_router(
    table: Arc<RouteTable>,
) -> Result<(skiff_router::RouterHandle, SocketAddr, std::path::PathBuf)> {
    table.set_settings(
        "bench",
        AppSettings {
            max_concurrency: 100_000,
            ..AppSettings::default()
        },
    );
    let run_dir = tempdir()?;
    let listen = free_addr()?;
    let router = skiff_router::spawn_router(
        RouterConfig {
            listen,
            https_listen: None,
            threads: ROUTER_THREADS,
            run_dir: run_dir.clone(),
            access_log: None,
            client_recv_buffer: None,
            head_timeout: skiff_router::DEFAULT_HEAD_TIMEOUT,
            max_connections: None,
            max_connections_per_client: None,
        },
        table,
    )?;
    router.wait_listening(Duration::from_secs(10))?;
    Ok((router, listen, run_dir))
}

pub(crate) struct Stats {
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) errors: usize,
}

impl Stats {
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn percentile(&self, p: usize) -> Duration {
        percentile(&self.latencies, p)
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1000.0)
}

/// Runs the load against `addr` for `duration` (plus a short unmeasured warm-up).
pub(crate) fn measure(
    addr: SocketAddr,
    host: &str,
    connections: usize,
    duration: Duration,
) -> Result<Stats> {
    let _ = load(addr, host, connections, Duration::from_millis(300));
    let stats = load(addr, host, connections, duration);
    if stats.latencies.is_empty() {
        bail!("no request to {addr} succeeded ({} errors)", stats.errors);
    }
    Ok(stats)
}

fn load(addr: SocketAddr, host: &str, connections: usize, duration: Duration) -> Stats {
    // Bounds each thread in count too, should a target answer implausibly fast.
    const MAX_PER_THREAD: usize = 2_000_000;
    let started = Instant::now();
    let deadline = started + duration;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: skiff-bench\r\n\r\n");
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut conn: Option<BufReader<TcpStream>> = None;
                while Instant::now() < deadline && latencies.len() < MAX_PER_THREAD {
                    let stream = match conn.take() {
                        Some(c) => c,
                        None => match connect(addr) {
                            Ok(s) => BufReader::new(s),
                            Err(_) => {
                                errors += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    let t = Instant::now();
                    match exchange(stream, request.as_bytes()) {
                        Ok(s) => {
                            latencies.push(t.elapsed());
                            conn = Some(s);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in threads {
        if let Ok((l, e)) = t.join() {
            latencies.extend(l);
            errors += e;
        }
    }
    latencies.sort_unstable();
    Stats {
        elapsed: started.elapsed(),
        latencies,
        errors,
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// One request and its response on a keep-alive connection; returns the connection for reuse.
fn exchange(mut conn: BufReader<TcpStream>, request: &[u8]) -> Result<BufReader<TcpStream>> {
    conn.get_mut().write_all(request)?;
    let response = crate::bench_host::read_response(&mut conn, 0)?;
    if response.status != 200 {
        bail!("unexpected answer: {}", response.status);
    }
    if response.close {
        bail!("the server closed the connection");
    }
    Ok(conn)
}

/// A static HTTP/1.1 server with keep-alive: a thread per connection, which is plenty here.
fn serve_static() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let Ok(mut out) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    BODY.len()
                );
                let mut response = head.into_bytes();
                response.extend_from_slice(BODY);
                loop {
                    // Requests without bodies: read the head up to its blank line.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" || line == "\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if out.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Starts `skiff bench bare-proxy` in its own process (Pingora owns its runtimes and exits
/// the process when it stops).
fn bare_pingora(upstream: SocketAddr, dir: &Path) -> Result<(Child, SocketAddr)> {
    let listen = free_addr()?;
    let run_dir = dir.join("bare-pingora");
    std::fs::create_dir_all(&run_dir)?;
    let child = Command::new(std::env::current_exe()?)
        .args(["bench", "bare-proxy", "--upstream", &upstream.to_string()])
        .args(["--listen", &listen.to_string(), "--run-dir"])
        .arg(&run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((child, listen))
}

/// The bare Pingora proxy: every request to `upstream`, with Pingora's defaults and the
/// router's thread count.
struct Bare(SocketAddr);

#[async_trait::async_trait]
impl pingora_proxy::ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut pingora_proxy::Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<pingora_core::upstreams::peer::HttpPeer>> {
        Ok(Box::new(pingora_core::upstreams::peer::HttpPeer::new(
            self.0,
            false,
            String::new(),
        )))
    }
}

/// Runs the bare proxy until the process is killed.
pub(crate) fn bare_proxy(upstream: SocketAddr, listen: SocketAddr, run_dir: &Path) -> Result<()> {
    use pingora_core::server::Server;
    use pingora_core::server::configuration::ServerConf;
    let conf = ServerConf {
        threads: ROUTER_THREADS,
        pid_file: run_dir.join("pid").display().to_string(),
        upgrade_sock: run_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, Bare(upstream));
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}

/// Starts nginx as a reverse proxy to `upstream` when it is installed: with its defaults, or
/// with `equivalent` set, configured to do the router's per-request work too (the forwarding
/// headers, a request id kept or made and echoed, `Via` both ways, one log line per request
/// in the router's format, buffered to a file). Either way a keep-alive connection is not
/// closed after nginx's default 1000 requests, as the router closes none.
fn nginx_proxy(
    upstream: SocketAddr,
    dir: &Path,
    equivalent: bool,
) -> Result<Option<(Child, SocketAddr)>> {
    let found = Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return Ok(None);
    }
    let listen = free_addr()?;
    let prefix = dir.join(if equivalent { "nginx-equiv" } else { "nginx" });
    std::fs::create_dir_all(prefix.join("logs"))?;
    let (http_extra, location_extra) = if equivalent {
        (
            format!(
                "  map $http_x_request_id $skiff_request_id {{\n\
                 \x20   default $request_id;\n\
                 \x20   \"~^[A-Za-z0-9+=/_-]{{20,200}}$\" $http_x_request_id;\n  }}\n\
                 \x20 log_format skiff 'at=info method=$request_method path=\"$request_uri\" host=$host \
                 request_id=$skiff_request_id fwd=\"$remote_addr\" dyno=web.1 connect=0ms \
                 service=$upstream_response_time status=$status bytes=$bytes_sent protocol=$scheme';\n\
                 \x20 access_log {log} skiff buffer=64k;\n",
                log = prefix.join("logs/access.log").display(),
            ),
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20     proxy_set_header X-Forwarded-Port $server_port;\n\
             \x20     proxy_set_header X-Request-Start $msec;\n\
             \x20     proxy_set_header X-Request-Id $skiff_request_id;\n\
             \x20     proxy_set_header Via \"1.1 nginx\";\n\
             \x20     add_header X-Request-Id $skiff_request_id always;\n\
             \x20     add_header Via \"1.1 nginx\" always;\n",
        )
    } else {
        ("  access_log off;\n".to_owned(), "")
    };
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 2;\npid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n{http_extra}  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
             upstream app {{ server {upstream}; keepalive 64; }}\n\
             server {{\n    listen {listen};\n    keepalive_requests 1000000;\n    location / {{\n      proxy_pass http://app;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n{location_extra}    }}\n  }}\n}}\n",
            pid = prefix.join("nginx.pid").display(),
            err = prefix.join("logs/error.log").display(),
            tmp = prefix.join("tmp").display(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Some((child, listen)))
}

pub(crate) fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn wait_for(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on {addr}")
}

pub(crate) fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

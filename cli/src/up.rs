//! `skiff up`: the whole platform in one foreground process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use skiff_platform::{Logs, PlatformConfig};
use skiff_router::{RouteTable, RouterConfig};

use crate::sched;

#[derive(clap::Args, Debug)]
pub(crate) struct UpArgs {
    /// Where state, repositories, slugs and caches live.
    #[arg(long, default_value = ".skiff", env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// Port of the API and git endpoint (on 127.0.0.1).
    #[arg(long, default_value_t = 5000)]
    api_port: u16,
    /// Port of the HTTP router (on 127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Port of the router's HTTPS listener (HTTP/2 and HTTP/1.1; 0 turns it off). Hosts are
    /// served over HTTPS once a certificate covers them: `skiff certs:add`, or --tls-cert.
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// A certificate (PEM chain) for the apps' domain, e.g. `*.example.com`, with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Apps are served at <app>.<domain>.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Router worker threads.
    #[arg(long, default_value_t = 2)]
    router_threads: usize,
    /// MiB a second that each app's request and response bodies may move through the router
    /// (0: no limit). One second's worth passes at full speed; beyond that the app's
    /// transfers, all its connections together, are held to the rate, so that one app's
    /// huge bodies cannot take the router from the others.
    #[arg(long, env = "SKIFF_APP_BANDWIDTH_MIB", default_value_t = 100)]
    app_bandwidth_mib: u64,
    /// KiB of receive buffer for each client connection to the router (0: the kernel's
    /// autotuning). It caps what a client can push that no one reads: an app that answers
    /// before reading an upload leaves the router's kernel to take in and free it all. The
    /// kernel doubles it; one connection's upload then tops out near twice this per
    /// round trip.
    #[arg(long, env = "SKIFF_CLIENT_RECV_BUFFER_KIB", default_value_t = 128)]
    client_recv_buffer_kib: usize,
    /// Seconds a client has to send a request's head, from its first byte (a connection's
    /// first head: from the connection's start); then it gets a 408 and is disconnected (slow
    /// loris), or is closed without a word if it sent nothing.
    #[arg(long, env = "SKIFF_HEAD_TIMEOUT_SECS", default_value_t = skiff_router::DEFAULT_HEAD_TIMEOUT.as_secs())]
    head_timeout_secs: u64,
    /// The most client connections the router holds open at once; beyond it, new ones get a
    /// 503 and are closed (default: half the process's file descriptor limit, leaving the
    /// rest to the API, git and dynos; 0: no cap but that limit).
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// The most connections one client address (an IPv6 /64) may hold open, so a single
    /// client cannot fill the cap above (default: a tenth of it; 0: no such cap, for a router
    /// behind a load balancer, where all clients share its address).
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: Option<usize>,
    /// Seconds that requests in flight get to finish when Skiff is told to stop (Ctrl-C or
    /// SIGTERM): the router takes no new connections meanwhile. A second Ctrl-C stops at once.
    #[arg(long, env = "SKIFF_DRAIN_SECS", default_value_t = 10)]
    drain_secs: u64,
    /// Instance slots of the pooling allocator (0: allocate instances on demand).
    #[arg(long, default_value_t = 1000)]
    pool_instances: u32,
    /// MiB of each instance slot kept resident between requests, where only the pages a
    /// request dirtied are reset (Linux 6.7 or later; 0: every freed slot goes back to the
    /// kernel).
    #[arg(long, default_value_t = skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES >> 20)]
    keep_resident_mib: usize,
    /// Microseconds of scheduler slice that the router's and the runtime's threads ask the
    /// kernel for (Linux 6.12 or later; held to 100..100000; 0: the kernel's default, 1.4 ms
    /// on a 2-core machine). A waking thread with a shorter slice than the running one takes its
    /// core at once, so a request's wake-ups do not wait out other processes' slices. Builds,
    /// git and add-on servers that Skiff starts keep the kernel's default.
    #[arg(long, env = "SKIFF_SCHED_SLICE_US", default_value_t = 100)]
    sched_slice_us: u64,
    /// Meter fuel per request: enables CPU budgets (SKIFF_REQUEST_FUEL) and `fuel=` log lines.
    #[arg(long)]
    fuel: bool,
    /// Toolchains that buildpacks install (compilers, interpreters as wasm), shared by all
    /// apps on this machine; defaults to `<data-dir>/toolchains`.
    #[arg(long, env = "SKIFF_TOOLCHAINS_DIR")]
    toolchains_dir: Option<PathBuf>,
    /// An existing PostgreSQL server for the postgres add-on, as an admin URL
    /// (postgres://USER:PASSWORD@HOST:PORT/postgres). Without it, Skiff runs its own cluster
    /// in the data dir with the machine's initdb and pg_ctl when an app first needs one.
    #[arg(long, env = "SKIFF_POSTGRES_ADMIN_URL", hide_env_values = true)]
    postgres_admin_url: Option<String>,
    /// Where the machine's initdb and pg_ctl are (default: on PATH, else
    /// /usr/lib/postgresql/*/bin).
    #[arg(long, env = "SKIFF_POSTGRES_BIN_DIR")]
    postgres_bin_dir: Option<PathBuf>,
    /// Do not write the API token to ~/.netrc.
    #[arg(long)]
    no_netrc: bool,
    /// After starting, deploy examples/rust-hello as app `hello` through git.
    #[arg(long)]
    demo: bool,
}

/// `--keep-resident-mib` in bytes; capped at 4 GiB, past any slot's memory, so the shift cannot
/// overflow.
pub(crate) fn keep_resident_bytes(mib: usize) -> usize {
    mib.min(1 << 12) << 20
}

/// Raises the soft limit on open files to the hard one and returns it: a server's due, as the
/// usual soft limit of 1024 is set for programs that use select(2).
fn raise_open_file_limit() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    // Linux refuses an unlimited open-file count; its usual ceiling (fs.nr_open) is 2^20.
    let wanted = maximum.unwrap_or(1 << 20);
    if current.is_some_and(|c| c < wanted) {
        let raised = Rlimit {
            current: Some(wanted),
            maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "the open-file limit stays as it is");
        }
    }
    let limit = getrlimit(Resource::Nofile).current;
    limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

pub(crate) fn run(args: UpArgs) -> Result<()> {
    init_logging();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let skiff_bin = std::env::current_exe().context("locating the skiff executable")?;
    let mut config = PlatformConfig::new(data_dir.clone(), skiff_bin);
    config.api_addr = SocketAddr::from(([127, 0, 0, 1], args.api_port));
    config.http_port = args.http_port;
    config.domain = args.domain.clone();
    config.pool_instances = (args.pool_instances > 0).then_some(args.pool_instances);
    config.keep_resident_bytes = keep_resident_bytes(args.keep_resident_mib);
    config.fuel = args.fuel;
    config.postgres_admin_url = args.postgres_admin_url.clone();
    config.postgres_bin_dir = args.postgres_bin_dir.clone();
    if let Some(dir) = &args.toolchains_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the toolchains dir {}", dir.display()))?;
        config.toolchains_dir = std::fs::canonicalize(dir)?;
    }

    let token = skiff_platform::ensure_admin_token(&data_dir)?;
    let api_host = config.api_addr.ip().to_string();
    if !args.no_netrc {
        match skiff_platform::netrc::default_path() {
            Some(path) => skiff_platform::netrc::upsert(&path, &api_host, "skiff", &token)
                .with_context(|| format!("writing {}", path.display()))?,
            None => tracing::warn!("HOME is not set; not writing ~/.netrc"),
        }
    }

    // Pingora owns its threads and runtimes: start it before any tokio runtime exists.
    // The router writes each request's line to the app's logs, so the hub exists first too.
    let routes = Arc::new(RouteTable::new(&config.domain));
    routes.set_app_bandwidth(args.app_bandwidth_mib.saturating_mul(1 << 20));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let cert = skiff_router::Certificate::from_pem(&read(cert)?, &read(key)?)
            .context("loading --tls-cert and --tls-key")?;
        routes.certs().set_platform(cert);
    }
    let https_listen =
        (args.https_port > 0).then(|| SocketAddr::from(([127, 0, 0, 1], args.https_port)));
    let logs = Logs::new();
    // Half the open files for the router's clients; the API, git, dynos and add-ons keep the
    // rest.
    let open_files = raise_open_file_limit();
    let max_connections = args.max_connections.unwrap_or((open_files / 2).max(64));
    let serving = sched::Serving::new(args.sched_slice_us);
    serving.before_router();
    let router = skiff_router::spawn_router(
        RouterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], args.http_port)),
            https_listen,
            threads: args.router_threads,
            run_dir: data_dir.join("run"),
            access_log: Some(logs.access_log()),
            client_recv_buffer: (args.client_recv_buffer_kib > 0)
                .then(|| args.client_recv_buffer_kib.saturating_mul(1024)),
            head_timeout: Duration::from_secs(args.head_timeout_secs.max(1)),
            max_connections: (max_connections > 0).then_some(max_connections),
            max_connections_per_client: match args.max_connections_per_client {
                Some(0) => None,
                Some(n) => Some(n),
                None if max_connections == 0 => None,
                None => Some((max_connections / 10).max(16)),
            },
        },
        routes.clone(),
    )?;
    router.wait_listening(Duration::from_secs(10))?;
    serving.after_router();
    config.runtime_thread_start = Some(serving.runtime_thread_start());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("skiff")
        .on_thread_start(move || serving.on_thread_start())
        .build()?;
    let result = runtime.block_on(serve(
        config,
        routes,
        logs,
        token,
        args.demo,
        args.https_port,
        Drain {
            router: &router,
            limit: Duration::from_secs(args.drain_secs),
        },
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    router.shutdown();
    println!("Skiff stopped.");
    result
}

/// How `skiff up` lets requests in flight finish when it is told to stop.
struct Drain<'a> {
    router: &'a skiff_router::RouterHandle,
    limit: Duration,
}

impl Drain<'_> {
    /// The router takes no new connections and closes idle ones; the open ones get until the
    /// limit (or a second Ctrl-C) to finish, while the dynos still serve them.
    async fn run(&self, term: &mut tokio::signal::unix::Signal) {
        self.router.drain();
        let started = tokio::time::Instant::now();
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        let mut said = false;
        loop {
            if self.router.drained() {
                return;
            }
            let open = self.router.open_connections();
            let s = if open == 1 { "" } else { "s" };
            // Idle kept-alive connections close at once: only lingering ones are news.
            if !said && open > 0 && started.elapsed() >= Duration::from_millis(200) {
                println!(
                    "Letting {open} open connection{s} finish (up to {} s; Ctrl-C again stops now)...",
                    self.limit.as_secs()
                );
                said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.limit) => {
                    if open > 0 {
                        println!("{open} connection{s} still open; closing.");
                    }
                    return;
                }
                _ = &mut interrupt => return,
                _ = term.recv() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

async fn serve(
    config: PlatformConfig,
    routes: Arc<RouteTable>,
    logs: Logs,
    token: String,
    demo: bool,
    https_port: u16,
    drain: Drain<'_>,
) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut platform = tokio::spawn(skiff_platform::run(
        config.clone(),
        routes,
        logs,
        stop_rx,
        ready_tx,
    ));

    tokio::select! {
        ready = ready_rx => {
            if ready.is_err() {
                // The platform ended before it was ready: report its error.
                return match platform.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(e.into()),
                };
            }
        }
        done = &mut platform => {
            return match done {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
        }
    }

    println!("Skiff is up.");
    println!("  API and git:  http://{}", config.api_addr);
    println!("  Apps:         {}", config.app_url("<app>"));
    if https_port > 0 {
        println!(
            "  HTTPS:        https://<app>.{}:{https_port}/ (once `skiff certs:add` covers the host)",
            config.domain
        );
    }
    println!("  Admin token:  {token}");
    println!("  Data dir:     {}", config.data_dir.display());
    println!("Press Ctrl-C to stop.");

    if demo {
        let config = config.clone();
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = deploy_demo(&config, &token) {
                eprintln!(" !    demo deploy failed: {e:#}");
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        done = &mut platform => {
            return match done {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
        }
    }
    println!("Stopping Skiff...");
    drain.run(&mut term).await;
    let _ = stop_tx.send(true);
    match platform.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the app `hello` (if needed) and pushes `examples/rust-hello` to it with real git.
fn deploy_demo(config: &PlatformConfig, token: &str) -> Result<()> {
    let example = find_example()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(format!("http://{}/apps", config.api_addr))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(r#"{"name":"hello"}"#)?;
    match resp.status().as_u16() {
        201 => println!("Created app hello."),
        409 => println!("App hello exists; pushing again."),
        other => bail!("creating the demo app failed with HTTP {other}"),
    }

    let src = config.data_dir.join("demo").join("rust-hello");
    let _ = std::fs::remove_dir_all(&src);
    copy_tree(&example, &src)?;
    git(&src, &["init", "--quiet", "--initial-branch=main"])?;
    git(&src, &["add", "--all"])?;
    git(
        &src,
        &[
            "-c",
            "user.name=Skiff demo",
            "-c",
            "user.email=demo@skiff.invalid",
            "commit",
            "--quiet",
            "-m",
            "Skiff demo app",
        ],
    )?;
    let url = config.git_url("hello");
    println!("$ git push {url} main");
    let auth = base64_basic("skiff", token);
    let status = Process::new("git")
        .current_dir(&src)
        .args([
            "-c",
            &format!("http.extraHeader=Authorization: Basic {auth}"),
            "push",
            "--force",
            &url,
            "main",
        ])
        .status()
        .context("running git push")?;
    if !status.success() {
        bail!("git push failed");
    }
    println!();
    println!("The demo app is live: curl {}", config.app_url("hello"));
    Ok(())
}

fn find_example() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from("examples/rust-hello"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rust-hello"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("Cargo.toml").is_file())
        .context("examples/rust-hello not found; run `skiff up --demo` from the Skiff repository")
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Process::new("git").current_dir(dir).args(args).status()?;
    if !status.success() {
        bail!("git {} failed", args.join(" "));
    }
    Ok(())
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn init_logging() {
    // tokio_postgres logs every server notice at info: the pool's ROLLBACK before a session
    // is reused ("no transaction in progress") and apps' `IF NOT EXISTS` would fill the log.
    // The h2 library warns of each frame a client gets wrong (a PING ack never asked for), so
    // one connection could write megabytes of them; it answers those clients itself.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,pingora_core=warn,pingora_proxy=warn,tokio_postgres=warn,h2=error",
        )
    });
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(ClientFailures)
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .try_init();
}

/// Drops Pingora's ERROR lines for what a client did: a request head that never arrived whole
/// (it hung up, or trickled past the head deadline, which the router logs itself, a line a
/// second at most), an error answer it did not stay to read, and an HTTP/2 connection whose
/// preface never came (cut at the head deadline, or garbage). A flood of such clients would
/// bury the platform's real errors under them.
struct ClientFailures;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientFailures {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut seen = ClientFailure::default();
        event.record(&mut seen);
        !seen.clients_doing()
    }
}

/// What [`ClientFailures`] looks for in an event's fields: Pingora logs through `log`, so its
/// target arrives as the `log.target` field. That field comes after the message, so both are
/// kept and judged once the event is read whole.
#[derive(Default)]
struct ClientFailure {
    target: String,
    message: String,
}

impl ClientFailure {
    fn clients_doing(&self) -> bool {
        let text = &self.message;
        if self.target.starts_with("pingora_proxy") {
            (text.starts_with("Fail to proxy") && text.contains("while reading request headers"))
                || text.starts_with("failed to send error response to downstream")
        } else {
            self.target.starts_with("pingora_core::apps") && text.starts_with("H2 handshake error")
        }
    }
}

impl tracing::field::Visit for ClientFailure {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            value.clone_into(&mut self.target);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

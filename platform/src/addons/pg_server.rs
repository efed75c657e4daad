//! Where the postgres add-on's databases live: a server the operator names with
//! `--postgres-admin-url`, or a cluster of Skiff's own in `<data-dir>/postgres`, made with the
//! machine's `initdb` and run with its `pg_ctl` on loopback (password auth, no Unix socket),
//! started when first needed and stopped with the platform.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::sync::Mutex;

use crate::PlatformError;

/// The superuser of Skiff's own cluster.
const LOCAL_ADMIN: &str = "skiff";

/// How to reach the server as its administrator.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Connection settings for admin work (database `postgres`).
    pub admin: tokio_postgres::Config,
    /// What apps' URLs name as the host.
    pub host: String,
    pub port: u16,
    /// Whether Skiff owns the server (then it may lock down the `postgres` database).
    pub local: bool,
}

enum Source {
    Admin(String),
    Local(Local),
    Unavailable,
}

struct Local {
    bin: PathBuf,
    /// `<data-dir>/postgres`: password, port, log, and `data/` (PGDATA).
    dir: PathBuf,
    /// initdb refuses to run as root: then the cluster runs as this (uid, gid).
    run_as: Option<(u32, u32)>,
    /// Running as root with no `postgres` user to hand the cluster to.
    root_without_user: bool,
}

/// This process's effective uid, from /proc (no libc call needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub(crate) struct PgServer {
    source: Source,
    running: Mutex<Option<Endpoint>>,
}

fn addon_err(msg: impl Into<String>) -> PlatformError {
    PlatformError::Addon(msg.into())
}

/// Where the machine keeps `initdb` and `pg_ctl`: on PATH, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (newest version first).
pub(crate) fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The uid and gid of a local user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _ = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn free_port(preferred: Option<u16>) -> std::io::Result<u16> {
    if let Some(port) = preferred
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    {
        return Ok(port);
    }
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

impl PgServer {
    pub(crate) fn new(
        admin_url: Option<String>,
        bin_dir: Option<PathBuf>,
        data_dir: &Path,
    ) -> Self {
        let bin_dir = match bin_dir {
            Some(dir) => {
                (dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()).then_some(dir)
            }
            None => find_bin_dir(),
        };
        let source = match admin_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => Source::Admin(url),
            None => match bin_dir {
                Some(bin) => {
                    let root = effective_uid() == Some(0);
                    let run_as = if root { user_ids("postgres") } else { None };
                    Source::Local(Local {
                        bin,
                        dir: data_dir.join("postgres"),
                        run_as,
                        root_without_user: root && run_as.is_none(),
                    })
                }
                None => Source::Unavailable,
            },
        };
        Self {
            source,
            running: Mutex::new(None),
        }
    }

    /// The server, started first if it is Skiff's own and not running yet.
    pub(crate) async fn endpoint(&self) -> Result<Endpoint, PlatformError> {
        let mut running = self.running.lock().await;
        if let Some(e) = running.as_ref() {
            return Ok(e.clone());
        }
        let endpoint = match &self.source {
            Source::Unavailable => {
                return Err(PlatformError::AddonUnavailable(
                    "this Skiff has no PostgreSQL server: start `skiff up` with --postgres-admin-url postgres://USER:PASSWORD@HOST:PORT/postgres (or SKIFF_POSTGRES_ADMIN_URL), or install PostgreSQL (Debian: apt-get install postgresql) so that `skiff up` runs its own cluster with initdb and pg_ctl".into(),
                ));
            }
            Source::Admin(url) => {
                let admin: tokio_postgres::Config = url.parse().map_err(|e| {
                    PlatformError::AddonUnavailable(format!(
                        "--postgres-admin-url is not a PostgreSQL URL: {e}"
                    ))
                })?;
                let host = match admin.get_hosts().first() {
                    Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                    _ => "127.0.0.1".to_owned(),
                };
                let port = admin.get_ports().first().copied().unwrap_or(5432);
                Endpoint {
                    admin,
                    host,
                    port,
                    local: false,
                }
            }
            Source::Local(local) => {
                let local = Local {
                    bin: local.bin.clone(),
                    dir: local.dir.clone(),
                    run_as: local.run_as,
                    root_without_user: local.root_without_user,
                };
                tokio::task::spawn_blocking(move || local.start())
                    .await
                    .map_err(|e| addon_err(e.to_string()))??
            }
        };
        // Fail here, with the server's words, rather than in the first provision.
        let client = connect(&endpoint.admin).await?;
        if endpoint.local {
            // App roles reach their own database only, not the maintenance ones.
            for db in ["postgres", "template1"] {
                client
                    .batch_execute(&format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"))
                    .await
                    .map_err(|e| addon_err(pg_message(&e)))?;
            }
        }
        *running = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Stops Skiff's own cluster if it runs; a server named by URL is left alone.
    pub(crate) fn stop(&self) {
        let Source::Local(local) = &self.source else {
            return;
        };
        let was_running = match self.running.try_lock() {
            Ok(mut r) => r.take().is_some(),
            // Someone is starting it right now; stopping is still right at shutdown.
            Err(_) => true,
        };
        if was_running {
            local.stop();
        }
    }
}

/// A new admin session.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, PlatformError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        addon_err(format!(
            "cannot reach the PostgreSQL server: {}",
            pg_message(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The server's message (with its detail), else the client's error chain.
pub(crate) fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        };
    }
    skiff_core::text::error_chain(e)
}

impl Local {
    fn pgdata(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // The server's user may not be able to enter the caller's working directory.
        cmd.current_dir(&self.dir).env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), PlatformError> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| addon_err(format!("running {program}: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut msg = format!(
            "{program} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(5).collect();
        if !tail.is_empty() && program == "pg_ctl" {
            msg.push_str("; server log: ");
            msg.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
        }
        Err(addon_err(msg))
    }

    /// Gives the cluster's files to the user it runs as.
    fn own(&self, path: &Path) -> Result<(), PlatformError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn start(self) -> Result<Endpoint, PlatformError> {
        if self.root_without_user {
            return Err(PlatformError::AddonUnavailable(
                "initdb cannot run as root and there is no `postgres` user; install Debian's postgresql package (it creates one) or pass --postgres-admin-url".into(),
            ));
        }
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        if self.run_as.is_some() {
            // The server's user must be able to walk down to its data directory.
            for dir in self.dir.ancestors().skip(1) {
                let meta = std::fs::metadata(dir)?;
                if meta.uid() == 0 && meta.mode() & 0o001 == 0 {
                    std::fs::set_permissions(
                        dir,
                        std::fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o001),
                    )?;
                }
            }
        }
        self.own(&self.dir)?;

        let password_file = self.dir.join("admin-password");
        let password = match std::fs::read_to_string(&password_file) {
            Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
            _ => {
                let p = super::token(24)?;
                crate::write_private(&password_file, &p)?;
                p
            }
        };
        let pgdata = self.pgdata();
        if !pgdata.join("PG_VERSION").is_file() {
            // A folder without PG_VERSION is an initdb that did not finish.
            let _ = std::fs::remove_dir_all(&pgdata);
            let pwfile = self.dir.join("initdb-password");
            crate::write_private(&pwfile, &password)?;
            self.own(&pwfile)?;
            let result = self.run(
                "initdb",
                &[
                    "-D",
                    &pgdata.to_string_lossy(),
                    "-U",
                    LOCAL_ADMIN,
                    "--auth=scram-sha-256",
                    "--pwfile",
                    &pwfile.to_string_lossy(),
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
            );
            let _ = std::fs::remove_file(&pwfile);
            result?;
            tracing::info!(dir = %pgdata.display(), "created the local PostgreSQL cluster");
        }

        self.clear_stale_pid()?;
        let port_file = self.dir.join("port");
        let remembered = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let port = free_port(remembered)?;
        let options =
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &pgdata.to_string_lossy(),
                "-l",
                &self.dir.join("server.log").to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        std::fs::write(&port_file, port.to_string())?;
        tracing::info!(port, "local PostgreSQL cluster up");
        let mut admin = tokio_postgres::Config::new();
        admin
            .host("127.0.0.1")
            .port(port)
            .user(LOCAL_ADMIN)
            .password(password)
            .dbname("postgres")
            .connect_timeout(std::time::Duration::from_secs(10));
        Ok(Endpoint {
            admin,
            host: "127.0.0.1".into(),
            port,
            local: true,
        })
    }

    /// After a kill -9 of Skiff, its cluster may still run (the postmaster outlives its
    /// parent) or have left a `postmaster.pid` behind: stop the first, remove the second.
    fn clear_stale_pid(&self) -> Result<(), PlatformError> {
        let pid_file = self.pgdata().join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let pid: Option<u32> = text.lines().next().and_then(|l| l.trim().parse().ok());
        let alive = pid.is_some_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
        });
        if alive {
            tracing::warn!(
                pid,
                "the local PostgreSQL cluster is still running from an earlier start; restarting it"
            );
            self.pg_ctl_stop()?;
        } else {
            tracing::warn!("removing a stale postmaster.pid left by a crash");
            std::fs::remove_file(&pid_file)?;
        }
        Ok(())
    }

    /// A fast shutdown (open sessions are ended), waiting up to a minute for it.
    fn pg_ctl_stop(&self) -> Result<(), PlatformError> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.pgdata().to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
    }

    fn stop(&self) {
        let result = self.pg_ctl_stop();
        match result {
            Ok(()) => tracing::info!("local PostgreSQL cluster stopped"),
            Err(e) => tracing::warn!(error = %e, "could not stop the local PostgreSQL cluster"),
        }
    }
}

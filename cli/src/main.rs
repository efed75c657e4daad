//! `skiff`: runs the platform (`skiff up`) and drives it like Heroku's CLI.

mod addons;
mod bench;
mod bench_chaos;
mod bench_host;
mod bench_isolation;
mod bench_load;
mod bench_router;
mod bench_serve;
mod client;
mod commands;
mod hook;
mod logs;
mod routing;
mod run;
mod sched;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::AppArg;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: git push your app, get it served as WebAssembly dynos"
)]
struct Cli {
    /// Print read commands' results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform in the foreground (API, git endpoint, router, runtime).
    Up(up::UpArgs),
    /// List your apps.
    Apps,
    /// Create an app and add the `skiff` git remote to the current repository.
    #[command(name = "apps:create")]
    AppsCreate {
        /// The app's name (random if omitted).
        name: Option<String>,
        /// Name of the git remote to add.
        #[arg(long, default_value = "skiff")]
        remote: String,
    },
    /// Show an app's details.
    #[command(name = "apps:info")]
    AppsInfo(AppArg),
    /// Rename an app (its URL and git URL change; the `skiff` remote is updated).
    #[command(name = "apps:rename")]
    AppsRename {
        #[command(flatten)]
        app: AppArg,
        /// The new name.
        new_name: String,
    },
    /// Delete an app, its dynos, releases, config and repository.
    #[command(name = "apps:destroy")]
    AppsDestroy {
        #[command(flatten)]
        app: AppArg,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// List an app's releases, newest first.
    Releases(AppArg),
    /// Show one release.
    #[command(name = "releases:info")]
    ReleasesInfo {
        #[command(flatten)]
        app: AppArg,
        /// The release (`v3` or `3`; default: the current one).
        version: Option<String>,
    },
    /// Roll back to a previous release (default: the one before the current).
    Rollback {
        #[command(flatten)]
        app: AppArg,
        /// The release to return to (`v3` or `3`).
        version: Option<String>,
    },
    /// Show an app's config vars.
    Config(AppArg),
    /// Print one config var's value.
    #[command(name = "config:get")]
    ConfigGet {
        #[command(flatten)]
        app: AppArg,
        /// The var's name.
        key: String,
    },
    /// Set config vars (KEY=VALUE ...); cuts a release and restarts the dynos.
    #[command(name = "config:set")]
    ConfigSet {
        #[command(flatten)]
        app: AppArg,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove config vars; cuts a release and restarts the dynos.
    #[command(name = "config:unset")]
    ConfigUnset {
        #[command(flatten)]
        app: AppArg,
        /// Names to remove.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List an app's dynos.
    Ps(AppArg),
    /// Scale process types: `ps:scale web=3 worker=1`, or count and size at once:
    /// `ps:scale web=2:standard-2x`.
    #[command(name = "ps:scale")]
    PsScale {
        #[command(flatten)]
        app: AppArg,
        /// TYPE=COUNT or TYPE=COUNT:SIZE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Change dyno sizes: `ps:resize web=standard-2x` (sizes: eco, basic, standard-1x,
    /// standard-2x, performance-m).
    #[command(name = "ps:resize", alias = "ps:type")]
    PsResize {
        #[command(flatten)]
        app: AppArg,
        /// TYPE=SIZE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Restart all dynos, or one (`web.1`).
    #[command(name = "ps:restart")]
    PsRestart {
        #[command(flatten)]
        app: AppArg,
        /// The dyno to restart (default: all).
        dyno: Option<String>,
    },
    /// Stop one dyno until the next restart, scale or release.
    #[command(name = "ps:stop")]
    PsStop {
        #[command(flatten)]
        app: AppArg,
        /// The dyno (`web.2`, `worker.1`).
        dyno: String,
    },
    /// Run a one-off dyno: `skiff run -a APP -- COMMAND ARGS...`.
    Run(run::RunArgs),
    /// Log in: check an API token and save it in ~/.netrc.
    Login {
        /// The token (prompted for when omitted).
        #[arg(long)]
        token: Option<String>,
    },
    /// Remove the saved token from ~/.netrc.
    Logout,
    /// Print the API token in use.
    #[command(name = "auth:token")]
    AuthToken,
    /// Print who the token belongs to.
    #[command(name = "auth:whoami")]
    AuthWhoami,
    /// Admin: create a user and print their API token (shown once).
    #[command(name = "users:create")]
    UsersCreate {
        /// The user's email.
        email: String,
    },
    /// List who can access an app.
    Access(AppArg),
    /// Give a user access to an app (push, deploy, config, scale).
    #[command(name = "access:add")]
    AccessAdd {
        #[command(flatten)]
        app: AppArg,
        /// The user's email.
        email: String,
    },
    /// Take a user's access to an app away.
    #[command(name = "access:remove")]
    AccessRemove {
        #[command(flatten)]
        app: AppArg,
        /// The user's email.
        email: String,
    },
    /// Show an app's recent log lines; with --tail, keep printing new ones.
    Logs(logs::LogsArgs),
    /// List an app's log drains.
    Drains(commands::AppArg),
    /// Send an app's logs to a syslog+tcp:// or http:// URL.
    #[command(name = "drains:add")]
    DrainsAdd {
        #[command(flatten)]
        app: commands::AppArg,
        /// syslog+tcp://HOST:PORT or http://HOST[:PORT]/PATH
        url: String,
    },
    /// Stop sending an app's logs to a URL.
    #[command(name = "drains:remove")]
    DrainsRemove {
        #[command(flatten)]
        app: commands::AppArg,
        /// The drain's URL, as `skiff drains` lists it.
        url: String,
    },
    /// Show whether an app is in maintenance mode.
    Maintenance(AppArg),
    /// Serve the maintenance page (503, H80) instead of the app; the dynos keep running.
    #[command(name = "maintenance:on")]
    MaintenanceOn(AppArg),
    /// Serve the app again.
    #[command(name = "maintenance:off")]
    MaintenanceOff(AppArg),
    /// List an app's domains.
    Domains(AppArg),
    /// Route a host name (www.example.com) to an app; a domain belongs to one app only.
    #[command(name = "domains:add")]
    DomainsAdd {
        #[command(flatten)]
        app: AppArg,
        /// The host name.
        hostname: String,
    },
    /// Stop routing a host name to an app.
    #[command(name = "domains:remove")]
    DomainsRemove {
        #[command(flatten)]
        app: AppArg,
        /// The host name.
        hostname: String,
    },
    /// List an app's HTTPS certificates.
    Certs(AppArg),
    /// Add (or, with --name of an existing one, replace) an HTTPS certificate for an app's
    /// domains: a PEM chain, leaf first, and its PEM private key.
    #[command(name = "certs:add")]
    CertsAdd {
        #[command(flatten)]
        app: AppArg,
        /// The certificate chain file (PEM).
        certificate: std::path::PathBuf,
        /// The private key file (PEM).
        key: std::path::PathBuf,
        /// Name to store it under (default: derived from its first domain).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one certificate: its domains, issuer, expiry, and which hosts it serves.
    #[command(name = "certs:info")]
    CertsInfo {
        #[command(flatten)]
        app: AppArg,
        /// The certificate's name (from `skiff certs`); optional when there is only one.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove an HTTPS certificate from an app.
    #[command(name = "certs:remove")]
    CertsRemove {
        #[command(flatten)]
        app: AppArg,
        /// The certificate's name (from `skiff certs`); optional when there is only one.
        #[arg(long)]
        name: Option<String>,
    },
    /// List an app's features and whether each is on.
    Features(AppArg),
    /// Turn a feature on (`http-session-affinity`).
    #[command(name = "features:enable")]
    FeaturesEnable {
        #[command(flatten)]
        app: AppArg,
        /// The feature.
        feature: String,
    },
    /// Turn a feature off.
    #[command(name = "features:disable")]
    FeaturesDisable {
        #[command(flatten)]
        app: AppArg,
        /// The feature.
        feature: String,
    },
    /// List an app's add-ons.
    Addons(AppArg),
    /// List the add-on services this Skiff offers.
    #[command(name = "addons:services")]
    AddonsServices,
    /// Add an add-on (`postgres`, `kv`) to an app: sets its config var (DATABASE_URL,
    /// KV_URL) and cuts a release.
    #[command(name = "addons:create")]
    AddonsCreate {
        #[command(flatten)]
        app: AppArg,
        /// The service: postgres or kv.
        service: String,
        /// The plan (default: the service's first).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Show an add-on (by name, or by service: `addons:info postgres`).
    #[command(name = "addons:info")]
    AddonsInfo {
        #[command(flatten)]
        app: AppArg,
        /// The add-on's name or service.
        addon: String,
    },
    /// Destroy an add-on and its data (drops the database); unsets its config vars.
    #[command(name = "addons:destroy", alias = "addons:remove")]
    AddonsDestroy {
        #[command(flatten)]
        app: AppArg,
        /// The add-on's name or service.
        addon: String,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Give an add-on new credentials (the old stop working) and cut a release.
    #[command(name = "addons:credentials:rotate")]
    AddonsRotate {
        #[command(flatten)]
        app: AppArg,
        /// The add-on's name or service.
        addon: String,
    },
    /// Show the app's PostgreSQL database.
    #[command(name = "pg:info")]
    PgInfo(AppArg),
    /// Open psql on the app's database (`-c SQL` runs one command).
    #[command(name = "pg:psql")]
    PgPsql {
        #[command(flatten)]
        app: AppArg,
        /// SQL to run instead of an interactive session.
        #[arg(short, long)]
        command: Option<String>,
    },
    /// Give the app's database role a new password and cut a release with the new
    /// DATABASE_URL.
    #[command(name = "pg:credentials:rotate")]
    PgRotate(AppArg),
    /// List the installed buildpacks in detection order, with the files each one detects.
    Buildpacks,
    /// Benchmarks that print tables: `skiff bench density`, `router`, `serve`, `chaos`,
    /// `isolation`, `load`.
    Bench(bench::BenchArgs),
    /// Internal: run by git hooks in app repositories.
    #[command(hide = true)]
    Hook {
        /// The hook's name (`pre-receive`).
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The platform sets up its own logging and threads (the router must start before any
        // tokio runtime), so it is dispatched before anything else.
        Command::Up(args) => up::run(args),
        Command::Hook { name } => return hook::run(&name),
        Command::Bench(args) => {
            init_client_logging();
            bench::run(args)
        }
        Command::Run(args) => {
            init_client_logging();
            return match run::run(args) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!(" !    {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        other => {
            init_client_logging();
            match addon_action(other) {
                Ok(action) => addons::run(action, cli.json),
                Err(other) => commands::run(*other, cli.json),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(" !    {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_client_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The add-on commands, or the command back if it is another one.
fn addon_action(cmd: Command) -> Result<addons::Action, Box<Command>> {
    use addons::Action;
    Ok(match cmd {
        Command::Addons(app) => Action::List(app),
        Command::AddonsServices => Action::Services,
        Command::AddonsCreate { app, service, plan } => Action::Create { app, service, plan },
        Command::AddonsInfo { app, addon } => Action::Info { app, addon },
        Command::AddonsDestroy {
            app,
            addon,
            confirm,
        } => Action::Destroy {
            app,
            addon,
            confirm,
        },
        Command::AddonsRotate { app, addon } => Action::Rotate { app, addon },
        Command::PgInfo(app) => Action::PgInfo(app),
        Command::PgPsql { app, command } => Action::PgPsql { app, command },
        Command::PgRotate(app) => Action::Rotate {
            app,
            addon: "postgres".into(),
        },
        other => return Err(Box::new(other)),
    })
}

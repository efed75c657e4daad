//! `skiff`: runs the platform (`skiff up`) and drives it like Heroku's CLI.

mod client;
mod commands;
mod hook;
mod logs;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: git push your app, get it served as WebAssembly dynos"
)]
struct Cli {
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
    AppsInfo(commands::AppArg),
    /// List an app's releases, newest first.
    Releases(commands::AppArg),
    /// Show an app's config vars.
    Config(commands::AppArg),
    /// Print one config var's value.
    #[command(name = "config:get")]
    ConfigGet {
        #[command(flatten)]
        app: commands::AppArg,
        /// The var's name.
        key: String,
    },
    /// Set config vars (KEY=VALUE ...); cuts a release and restarts the dynos.
    #[command(name = "config:set")]
    ConfigSet {
        #[command(flatten)]
        app: commands::AppArg,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove config vars; cuts a release and restarts the dynos.
    #[command(name = "config:unset")]
    ConfigUnset {
        #[command(flatten)]
        app: commands::AppArg,
        /// Names to remove.
        #[arg(required = true)]
        keys: Vec<String>,
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
    /// List the buildpacks this Skiff installs, in detection order.
    Buildpacks,
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
        other => {
            init_client_logging();
            commands::run(other)
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

//! The day-to-day commands, printed the way Heroku's CLI prints them.

use std::collections::BTreeMap;
use std::process::Command as Process;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::Command;
use crate::client::Client;

/// `-a/--app NAME`, else the app behind the `skiff` git remote.
#[derive(clap::Args, Debug)]
pub(crate) struct AppArg {
    /// The app (default: from the `skiff` git remote of the current repository).
    #[arg(short, long)]
    app: Option<String>,
}

impl AppArg {
    pub(crate) fn resolve(&self) -> Result<String> {
        if let Some(a) = &self.app {
            return Ok(a.clone());
        }
        let out = Process::new("git")
            .args(["remote", "get-url", "skiff"])
            .output()
            .context("running git")?;
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || url.is_empty() {
            bail!(
                "no app specified: pass -a APP, or run inside a repository with a `skiff` git remote"
            );
        }
        let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        Ok(last.strip_suffix(".git").unwrap_or(last).to_owned())
    }
}

#[derive(Deserialize)]
struct AppInfo {
    name: String,
    web_url: String,
    git_url: String,
    current_release: Option<u64>,
    running_release: Option<u64>,
    process_types: Vec<String>,
}

#[derive(Deserialize)]
struct Release {
    version: u64,
    description: String,
    created_by: String,
    created_at: i64,
}

pub(crate) fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Buildpacks => {
            println!("=== Buildpacks (detection order)");
            for (i, name) in skiff_platform::builtin_buildpack_names().iter().enumerate() {
                println!("{}. {name}", i + 1);
            }
            Ok(())
        }
        Command::Apps => {
            let apps: Vec<AppInfo> = Client::from_env()?.get("/apps")?;
            println!("=== Apps");
            for a in apps {
                println!("{}", a.name);
            }
            Ok(())
        }
        Command::AppsCreate { name, remote } => {
            let client = Client::from_env()?;
            let body = match &name {
                Some(n) => serde_json::json!({ "name": n }),
                None => serde_json::json!({}),
            };
            let label = name.as_deref().unwrap_or("app");
            eprint!("Creating {label}... ");
            let app: AppInfo = client.send("POST", "/apps", &body)?;
            eprintln!("done");
            println!("{} | {}", app.web_url, app.git_url);
            add_remote(&remote, &app.git_url);
            Ok(())
        }
        Command::AppsInfo(app) => {
            let name = app.resolve()?;
            let a: AppInfo = Client::from_env()?.get(&format!("/apps/{name}"))?;
            println!("=== {}", a.name);
            println!("Web URL:         {}", a.web_url);
            println!("Git URL:         {}", a.git_url);
            println!(
                "Release:         {}",
                a.current_release
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "none (push to deploy)".into())
            );
            println!(
                "Running:         {}",
                a.running_release
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "nothing".into())
            );
            println!("Process types:   {}", a.process_types.join(", "));
            Ok(())
        }
        Command::Releases(app) => {
            let name = app.resolve()?;
            let releases: Vec<Release> =
                Client::from_env()?.get(&format!("/apps/{name}/releases"))?;
            match releases.first() {
                Some(r) => println!("=== {name} Releases - Current: v{}", r.version),
                None => println!("=== {name} Releases (none yet: git push skiff main)"),
            }
            for r in releases {
                println!(
                    "v{:<4} {:<40} {:<10} {}",
                    r.version,
                    r.description,
                    r.created_by,
                    timestamp(r.created_at)
                );
            }
            Ok(())
        }
        Command::Config(app) => {
            let name = app.resolve()?;
            let vars: BTreeMap<String, String> =
                Client::from_env()?.get(&format!("/apps/{name}/config"))?;
            println!("=== {name} Config Vars");
            let width = vars.keys().map(|k| k.len()).max().unwrap_or(0) + 1;
            for (k, v) in vars {
                println!("{:<width$} {v}", format!("{k}:"));
            }
            Ok(())
        }
        Command::ConfigGet { app, key } => {
            let name = app.resolve()?;
            let vars: BTreeMap<String, String> =
                Client::from_env()?.get(&format!("/apps/{name}/config"))?;
            println!("{}", vars.get(&key).map(String::as_str).unwrap_or(""));
            Ok(())
        }
        Command::ConfigSet { app, pairs } => {
            let name = app.resolve()?;
            let mut changes = serde_json::Map::new();
            for pair in &pairs {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("{pair:?} is not KEY=VALUE"))?;
                changes.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
            }
            let keys: Vec<_> = changes.keys().cloned().collect();
            eprint!("Setting {} and restarting {name}... ", keys.join(", "));
            let out: serde_json::Value = Client::from_env()?.send(
                "PATCH",
                &format!("/apps/{name}/config"),
                &serde_json::Value::Object(changes.clone()),
            )?;
            eprintln!("{}", release_suffix(&out));
            for (k, v) in changes {
                println!("{k}: {}", v.as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::ConfigUnset { app, keys } => {
            let name = app.resolve()?;
            let changes: serde_json::Map<_, _> = keys
                .iter()
                .map(|k| (k.clone(), serde_json::Value::Null))
                .collect();
            eprint!("Unsetting {} and restarting {name}... ", keys.join(", "));
            let out: serde_json::Value = Client::from_env()?.send(
                "PATCH",
                &format!("/apps/{name}/config"),
                &serde_json::Value::Object(changes),
            )?;
            eprintln!("{}", release_suffix(&out));
            Ok(())
        }
        Command::Logs(args) => crate::logs::run(args),
        Command::Drains(app) => crate::logs::list_drains(app),
        Command::DrainsAdd { app, url } => crate::logs::add_drain(app, &url),
        Command::DrainsRemove { app, url } => crate::logs::remove_drain(app, &url),
        Command::Up(_) | Command::Hook { .. } => unreachable!("dispatched in main"),
    }
}

fn release_suffix(out: &serde_json::Value) -> String {
    match out.get("release").and_then(|r| r.as_u64()) {
        Some(v) => format!("done, v{v}"),
        None => "done".to_owned(),
    }
}

/// Adds (or repoints) the git remote, when run inside a repository.
pub(crate) fn add_remote(remote: &str, url: &str) {
    let inside = Process::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !inside {
        return;
    }
    let exists = Process::new("git")
        .args(["remote", "get-url", remote])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let verb = if exists { "set-url" } else { "add" };
    match Process::new("git")
        .args(["remote", verb, remote, url])
        .status()
    {
        Ok(s) if s.success() => eprintln!("Git remote {remote} added"),
        _ => eprintln!(
            " !    could not add the git remote {remote}; add it with: git remote add {remote} {url}"
        ),
    }
}

/// `YYYY-MM-DD HH:MM:SS` UTC from Unix seconds.
fn timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for the whole i64 day range used here.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_795_873_600), "2026-11-28 13:46:40");
    }
}

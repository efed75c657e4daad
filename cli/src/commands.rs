//! The day-to-day commands, printed the way Heroku's CLI prints them (`--json` for scripts).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::Command as Process;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Command;
use crate::client::{Client, host_of};

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
    owner: String,
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
    slug: String,
    slug_available: bool,
    current: bool,
    manifest: Value,
}

#[derive(Deserialize)]
struct Dyno {
    name: String,
    #[serde(rename = "type")]
    process_type: String,
    command: String,
    state: String,
    size: String,
    since: i64,
}

/// Prints `value` as JSON and returns true when `--json` was given.
pub(crate) fn json_out(json: bool, value: &Value) -> Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(json)
}

pub(crate) fn run(cmd: Command, json: bool) -> Result<()> {
    match cmd {
        Command::Buildpacks => {
            // What the running platform has installed; without one, what `skiff up` installs.
            let value: Value = match Client::from_env().and_then(|c| c.get("/buildpacks")) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!(" !     {e:#}; listing the buildpacks built into this skiff");
                    json!(
                        skiff_platform::builtin_buildpack_names()
                            .into_iter()
                            .map(|name| json!({
                                "name": name,
                                "detects": skiff_platform::buildpack_detects(name),
                            }))
                            .collect::<Vec<_>>()
                    )
                }
            };
            if json_out(json, &value)? {
                return Ok(());
            }
            println!("=== Buildpacks (detection order)");
            for (i, bp) in value.as_array().into_iter().flatten().enumerate() {
                let name = bp["name"].as_str().unwrap_or("?");
                match bp["detects"].as_str() {
                    Some(files) => println!("{}. {name:<8} {files}", i + 1),
                    None => println!("{}. {name}", i + 1),
                }
            }
            Ok(())
        }
        Command::Apps => {
            let value: Value = Client::from_env()?.get("/apps")?;
            if json_out(json, &value)? {
                return Ok(());
            }
            let apps: Vec<AppInfo> = serde_json::from_value(value)?;
            println!("=== Apps");
            for a in apps {
                println!("{}", a.name);
            }
            Ok(())
        }
        Command::AppsCreate { name, remote } => {
            let client = Client::from_env()?;
            let body = match &name {
                Some(n) => json!({ "name": n }),
                None => json!({}),
            };
            let label = name.as_deref().unwrap_or("app");
            eprint!("Creating {label}... ");
            let app: AppInfo = client.send("POST", "/apps", &body)?;
            eprintln!("done");
            println!("{} | {}", app.web_url, app.git_url);
            add_remote(&remote, &app.git_url, false);
            Ok(())
        }
        Command::AppsInfo(app) => {
            let name = app.resolve()?;
            let value: Value = Client::from_env()?.get(&format!("/apps/{name}"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            let a: AppInfo = serde_json::from_value(value)?;
            println!("=== {}", a.name);
            println!("Owner:           {}", a.owner);
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
        Command::AppsRename { app, new_name } => {
            let name = app.resolve()?;
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Renaming {name} to {new_name}"));
            let a: AppInfo = client.send(
                "PATCH",
                &format!("/apps/{name}"),
                &json!({ "name": new_name }),
            )?;
            spin.done("done");
            println!("{} | {}", a.web_url, a.git_url);
            // Heroku updates the remote of the repository the command runs in.
            let remote_matches = Process::new("git")
                .args(["remote", "get-url", "skiff"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .ends_with(&format!("/{name}.git"))
                })
                .unwrap_or(false);
            if remote_matches {
                add_remote("skiff", &a.git_url, true);
            }
            Ok(())
        }
        Command::AppsDestroy { app, confirm } => {
            let name = app.resolve()?;
            if confirm.as_deref() != Some(name.as_str()) {
                bail!(
                    "this deletes {name}, its releases, config and repository; run again with --confirm {name}"
                );
            }
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Destroying {name} (including all add-ons)"));
            let _: Value = client.send("DELETE", &format!("/apps/{name}"), &Value::Null)?;
            spin.done("done");
            Ok(())
        }
        Command::Releases(app) => {
            let name = app.resolve()?;
            let value: Value = Client::from_env()?.get(&format!("/apps/{name}/releases"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            let releases: Vec<Release> = serde_json::from_value(value)?;
            match releases.first() {
                Some(r) => println!("=== {name} Releases - Current: v{}", r.version),
                None => println!("=== {name} Releases (none yet: git push skiff main)"),
            }
            for r in releases {
                let gone = if r.slug_available {
                    ""
                } else {
                    "  (slug pruned)"
                };
                println!(
                    "v{:<4} {:<40} {:<22} {}{gone}",
                    r.version,
                    r.description,
                    r.created_by,
                    timestamp(r.created_at)
                );
            }
            Ok(())
        }
        Command::ReleasesInfo { app, version } => {
            let name = app.resolve()?;
            let client = Client::from_env()?;
            let version = match version {
                Some(v) => v.trim_start_matches('v').to_owned(),
                None => {
                    let all: Vec<Release> = client.get(&format!("/apps/{name}/releases"))?;
                    all.first()
                        .map(|r| r.version.to_string())
                        .with_context(|| format!("{name} has no releases"))?
                }
            };
            let value: Value = client.get(&format!("/apps/{name}/releases/{version}"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            let r: Release = serde_json::from_value(value)?;
            println!(
                "=== Release v{}{}",
                r.version,
                if r.current { " (current)" } else { "" }
            );
            println!("By:           {}", r.created_by);
            println!("Change:       {}", r.description);
            println!("When:         {}", timestamp(r.created_at));
            println!(
                "Slug:         {}{}",
                &r.slug[..r.slug.len().min(12)],
                if r.slug_available {
                    ""
                } else {
                    " (pruned: rollback not possible)"
                }
            );
            if let Some(types) = r.manifest.get("process_types").and_then(Value::as_object) {
                for (t, spec) in types {
                    println!(
                        "Process:      {t}: {}",
                        spec.get("command").and_then(Value::as_str).unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Command::Rollback { app, version } => {
            let name = app.resolve()?;
            let target = match &version {
                Some(v) => Some(
                    v.trim_start_matches('v')
                        .parse::<u64>()
                        .with_context(|| format!("{v} is not a release version"))?,
                ),
                None => None,
            };
            let label = target
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "the previous release".into());
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Rolling back {name} to {label}"));
            let r: Release = client.send(
                "POST",
                &format!("/apps/{name}/releases"),
                &json!({ "rollback": target }),
            )?;
            spin.done(&format!("done, v{}", r.version));
            Ok(())
        }
        Command::Config(app) => {
            let name = app.resolve()?;
            let value: Value = Client::from_env()?.get(&format!("/apps/{name}/config"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            let vars: BTreeMap<String, String> = serde_json::from_value(value)?;
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
            if json_out(json, &json!(vars.get(&key)))? {
                return Ok(());
            }
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
                changes.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let keys: Vec<_> = changes.keys().cloned().collect();
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Setting {} and restarting {name}", keys.join(", ")));
            let out: Value = client.send(
                "PATCH",
                &format!("/apps/{name}/config"),
                &Value::Object(changes.clone()),
            )?;
            spin.done(&release_suffix(&out));
            for (k, v) in changes {
                println!("{k}: {}", v.as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::ConfigUnset { app, keys } => {
            let name = app.resolve()?;
            let changes: serde_json::Map<_, _> =
                keys.iter().map(|k| (k.clone(), Value::Null)).collect();
            let client = Client::from_env()?;
            let spin = Spinner::start(format!(
                "Unsetting {} and restarting {name}",
                keys.join(", ")
            ));
            let out: Value = client.send(
                "PATCH",
                &format!("/apps/{name}/config"),
                &Value::Object(changes),
            )?;
            spin.done(&release_suffix(&out));
            Ok(())
        }
        Command::Ps(app) => {
            let name = app.resolve()?;
            let value: Value = Client::from_env()?.get(&format!("/apps/{name}/dynos"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            print_ps(&value)
        }
        Command::PsScale { app, pairs } => {
            let name = app.resolve()?;
            let mut body = serde_json::Map::new();
            for pair in &pairs {
                let (t, n) = pair
                    .split_once('=')
                    .with_context(|| format!("{pair:?} is not TYPE=COUNT[:SIZE]"))?;
                // `web=2:standard-2x` changes count and size in one request, as on Heroku.
                let (n, size) = match n.split_once(':') {
                    Some((n, size)) => (n, Some(size.to_ascii_lowercase())),
                    None => (n, None),
                };
                let n: u32 = n
                    .parse()
                    .with_context(|| format!("{n:?} is not a number of dynos"))?;
                match size {
                    Some(size) => body.insert(t.to_owned(), json!({ "quantity": n, "size": size })),
                    None => body.insert(t.to_owned(), json!(n)),
                };
            }
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Scaling dynos on {name}"));
            let out: Value = client.send(
                "PATCH",
                &format!("/apps/{name}/formation"),
                &Value::Object(body),
            )?;
            spin.done(&format!("done, now running {}", formation_summary(&out)));
            Ok(())
        }
        Command::PsResize { app, pairs } => {
            let name = app.resolve()?;
            let mut body = serde_json::Map::new();
            for pair in &pairs {
                let (t, size) = pair
                    .split_once('=')
                    .with_context(|| format!("{pair:?} is not TYPE=SIZE"))?;
                body.insert(t.to_owned(), json!({ "size": size }));
            }
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Resizing dynos on {name}"));
            let out: Value = client.send(
                "PATCH",
                &format!("/apps/{name}/formation"),
                &Value::Object(body),
            )?;
            spin.done(&format!("done, now running {}", formation_summary(&out)));
            Ok(())
        }
        Command::PsRestart { app, dyno } => {
            let name = app.resolve()?;
            let client = Client::from_env()?;
            let (label, path) = match &dyno {
                Some(d) => (d.clone(), format!("/apps/{name}/dynos/{d}")),
                None => ("all dynos".to_owned(), format!("/apps/{name}/dynos")),
            };
            let spin = Spinner::start(format!("Restarting {label} on {name}"));
            let _: Value = client.send("DELETE", &path, &Value::Null)?;
            spin.done("done");
            Ok(())
        }
        Command::PsStop { app, dyno } => {
            let name = app.resolve()?;
            let client = Client::from_env()?;
            let spin = Spinner::start(format!("Stopping {dyno} on {name}"));
            let _: Value = client.send(
                "POST",
                &format!("/apps/{name}/dynos/{dyno}/actions/stop"),
                &json!({}),
            )?;
            spin.done("done");
            Ok(())
        }
        Command::Login { token } => login(token),
        Command::Logout => {
            let client_base =
                std::env::var("SKIFF_API_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
            let host = host_of(&client_base);
            let path = skiff_platform::netrc::default_path().context("HOME is not set")?;
            skiff_platform::netrc::remove(&path, &host)
                .with_context(|| format!("updating {}", path.display()))?;
            eprintln!("Logged out of {host}");
            Ok(())
        }
        Command::AuthToken => {
            println!("{}", Client::from_env()?.token());
            Ok(())
        }
        Command::AuthWhoami => {
            let who: Value = Client::from_env()?.get("/account")?;
            if json_out(json, &who)? {
                return Ok(());
            }
            println!("{}", who.get("email").and_then(Value::as_str).unwrap_or(""));
            Ok(())
        }
        Command::UsersCreate { email } => {
            let out: Value =
                Client::from_env()?.send("POST", "/users", &json!({ "email": email }))?;
            if json_out(json, &out)? {
                return Ok(());
            }
            eprintln!(
                "Created user {email}. Their API token (shown once; they run `skiff login --token ...`):"
            );
            println!("{}", out.get("token").and_then(Value::as_str).unwrap_or(""));
            Ok(())
        }
        Command::Access(app) => {
            let name = app.resolve()?;
            let value: Value = Client::from_env()?.get(&format!("/apps/{name}/collaborators"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            println!("=== {name} Access");
            println!(
                "{:<40} owner",
                value.get("owner").and_then(Value::as_str).unwrap_or("")
            );
            for c in value
                .get("collaborators")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("{:<40} collaborator", c.as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::AccessAdd { app, email } => {
            let name = app.resolve()?;
            eprint!("Adding {email} access to the app {name}... ");
            let _: Value = Client::from_env()?.send(
                "POST",
                &format!("/apps/{name}/collaborators"),
                &json!({ "email": email }),
            )?;
            eprintln!("done");
            Ok(())
        }
        Command::AccessRemove { app, email } => {
            let name = app.resolve()?;
            eprint!("Removing {email} access from the app {name}... ");
            let _: Value = Client::from_env()?.send(
                "DELETE",
                &format!("/apps/{name}/collaborators/{email}"),
                &Value::Null,
            )?;
            eprintln!("done");
            Ok(())
        }
        Command::Logs(args) => crate::logs::run(args),
        Command::Drains(app) => crate::logs::list_drains(app),
        Command::DrainsAdd { app, url } => crate::logs::add_drain(app, &url),
        Command::DrainsRemove { app, url } => crate::logs::remove_drain(app, &url),
        Command::Maintenance(app) => crate::routing::maintenance(app, json),
        Command::MaintenanceOn(app) => crate::routing::set_maintenance(app, true),
        Command::MaintenanceOff(app) => crate::routing::set_maintenance(app, false),
        Command::Domains(app) => crate::routing::domains(app, json),
        Command::DomainsAdd { app, hostname } => crate::routing::add_domain(app, &hostname),
        Command::DomainsRemove { app, hostname } => crate::routing::remove_domain(app, &hostname),
        Command::Certs(app) => crate::routing::certs(app, json),
        Command::CertsAdd {
            app,
            certificate,
            key,
            name,
        } => crate::routing::add_cert(app, &certificate, &key, name, json),
        Command::CertsInfo { app, name } => crate::routing::cert_info(app, name, json),
        Command::CertsRemove { app, name } => crate::routing::remove_cert(app, name),
        Command::Features(app) => crate::routing::features(app, json),
        Command::FeaturesEnable { app, feature } => {
            crate::routing::set_feature(app, &feature, true)
        }
        Command::FeaturesDisable { app, feature } => {
            crate::routing::set_feature(app, &feature, false)
        }
        Command::Up(_)
        | Command::Hook { .. }
        | Command::Run(_)
        | Command::Bench(_)
        | Command::Addons(_)
        | Command::AddonsServices
        | Command::AddonsCreate { .. }
        | Command::AddonsInfo { .. }
        | Command::AddonsDestroy { .. }
        | Command::AddonsRotate { .. }
        | Command::PgInfo(_)
        | Command::PgPsql { .. }
        | Command::PgRotate(_) => {
            bail!("this command is dispatched before the others; this is a bug in skiff")
        }
    }
}

/// `web at 2:standard-1x, worker at 1:eco`, as Heroku prints a formation.
fn formation_summary(out: &Value) -> String {
    out.get("formation")
        .and_then(Value::as_object)
        .map(|f| {
            f.iter()
                .map(|(t, s)| {
                    format!(
                        "{t} at {}:{}",
                        s["quantity"],
                        s["size"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_ps(value: &Value) -> Result<()> {
    let dynos: Vec<Dyno> =
        serde_json::from_value(value.get("dynos").cloned().unwrap_or(Value::Null))?;
    if dynos.is_empty() {
        println!("No dynos are running. Scale up with `skiff ps:scale web=1`, or push code.");
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut current = "";
    for d in &dynos {
        if d.process_type != current {
            let count = dynos
                .iter()
                .filter(|x| x.process_type == d.process_type)
                .count();
            println!(
                "=== {} ({}): {} ({count})",
                d.process_type, d.size, d.command
            );
            current = &d.process_type;
        }
        println!(
            "{}: {} {} ({} ago)",
            d.name,
            d.state,
            timestamp(d.since),
            ago(now - d.since)
        );
    }
    Ok(())
}

fn login(token: Option<String>) -> Result<()> {
    let base = std::env::var("SKIFF_API_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:5000".to_owned())
        .trim_end_matches('/')
        .to_owned();
    let token = match token {
        Some(t) => t,
        None => {
            eprint!("API token for {base}: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(format!("{base}/account"))
        .header("authorization", format!("Bearer {token}"))
        .call()
        .with_context(|| format!("cannot reach the Skiff API at {base}"))?;
    if !resp.status().is_success() {
        bail!("that token was refused by {base}");
    }
    let who: Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    let email = who
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("skiff")
        .to_owned();
    let path = skiff_platform::netrc::default_path().context("HOME is not set")?;
    skiff_platform::netrc::upsert(&path, &host_of(&base), &email, &token)?;
    eprintln!("Logged in as {email}");
    Ok(())
}

pub(crate) fn release_suffix(out: &Value) -> String {
    match out.get("release").and_then(Value::as_u64) {
        Some(v) => format!("done, v{v}"),
        None => "done".to_owned(),
    }
}

/// A spinner on stderr while a call runs, when stderr is a terminal; a plain line otherwise.
pub(crate) struct Spinner {
    bar: Option<indicatif::ProgressBar>,
    message: String,
}

impl Spinner {
    pub(crate) fn start(message: String) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message(format!("{message}..."));
            bar.enable_steady_tick(Duration::from_millis(100));
            Self {
                bar: Some(bar),
                message,
            }
        } else {
            eprint!("{message}... ");
            Self { bar: None, message }
        }
    }

    pub(crate) fn done(self, outcome: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(format!("{}... {outcome}", self.message)),
            None => eprintln!("{outcome}"),
        }
    }
}

/// Adds the git remote when run inside a repository; an existing one is repointed only when
/// `replace` (a rename of the app it points to).
pub(crate) fn add_remote(remote: &str, url: &str, replace: bool) {
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
    if exists && !replace {
        eprintln!(
            " !    Git remote {remote} already exists and was left as it is; add this app with: git remote add NAME {url}"
        );
        return;
    }
    let verb = if exists { "set-url" } else { "add" };
    match Process::new("git")
        .args(["remote", verb, remote, url])
        .status()
    {
        Ok(s) if s.success() => eprintln!(
            "Git remote {remote} {}",
            if exists { "updated" } else { "added" }
        ),
        _ => eprintln!(
            " !    could not add the git remote {remote}; add it with: git remote add {remote} {url}"
        ),
    }
}

fn ago(secs: i64) -> String {
    match secs.max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

pub(crate) use skiff_core::text::timestamp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ages() {
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(7200), "2h");
    }
}

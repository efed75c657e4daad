//! `skiff addons*` and `skiff pg:*`: the app's add-ons, and the postgres ones up close.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::Client;
use crate::commands::{AppArg, Spinner, json_out, release_suffix};

/// What the add-on commands do.
#[derive(Debug)]
pub(crate) enum Action {
    List(AppArg),
    Services,
    Create {
        app: AppArg,
        service: String,
        plan: Option<String>,
    },
    Info {
        app: AppArg,
        addon: String,
    },
    Destroy {
        app: AppArg,
        addon: String,
        confirm: Option<String>,
    },
    Rotate {
        app: AppArg,
        addon: String,
    },
    PgInfo(AppArg),
    PgPsql {
        app: AppArg,
        command: Option<String>,
    },
}

/// The config vars an add-on sets, as `A, B`.
fn config_var_list(addon: &Value) -> String {
    addon["config_vars"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_addon_line(a: &Value) {
    println!(
        "{:<20} {:<10} {:<10} {}",
        a["name"].as_str().unwrap_or(""),
        a["provider"].as_str().unwrap_or(""),
        a["plan"].as_str().unwrap_or(""),
        config_var_list(a)
    );
}

fn print_info(value: &Value) {
    let addon = &value["addon"];
    println!("=== {}", addon["name"].as_str().unwrap_or(""));
    let mut rows = vec![
        (
            "Service".to_owned(),
            addon["provider"].as_str().unwrap_or("").to_owned(),
        ),
        (
            "Plan".to_owned(),
            addon["plan"].as_str().unwrap_or("").to_owned(),
        ),
        (
            "App".to_owned(),
            addon["app"].as_str().unwrap_or("").to_owned(),
        ),
        ("Config Vars".to_owned(), config_var_list(addon)),
    ];
    for fact in value["info"].as_array().into_iter().flatten() {
        rows.push((
            fact["name"].as_str().unwrap_or("").to_owned(),
            fact["value"].as_str().unwrap_or("").to_owned(),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    for (k, v) in rows {
        println!("{:<width$}{v}", format!("{k}:"));
    }
}

/// `psql` on PATH, else Debian's `/usr/lib/postgresql/<version>/bin/psql`.
fn find_psql() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("psql").is_file() {
                return Some(dir.join("psql"));
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let psql = e.path().join("bin/psql");
            psql.is_file().then_some((v, psql))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

pub(crate) fn run(action: Action, json: bool) -> Result<()> {
    let client = Client::from_env()?;
    match action {
        Action::List(app) => {
            let name = app.resolve()?;
            let value: Value = client.get(&format!("/apps/{name}/addons"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            let list = value.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!(
                    "{name} has no add-ons. Add one with `skiff addons:create postgres -a {name}`."
                );
                return Ok(());
            }
            println!("=== {name} Add-ons");
            println!(
                "{:<20} {:<10} {:<10} Config Vars",
                "Add-on", "Service", "Plan"
            );
            for a in &list {
                print_addon_line(a);
            }
        }
        Action::Services => {
            let value: Value = client.get("/addon-services")?;
            if json_out(json, &value)? {
                return Ok(());
            }
            println!("=== Add-on services");
            for s in value.as_array().into_iter().flatten() {
                println!(
                    "{:<10} {}",
                    s["name"].as_str().unwrap_or(""),
                    s["description"].as_str().unwrap_or("")
                );
            }
        }
        Action::Create { app, service, plan } => {
            let name = app.resolve()?;
            let spin = Spinner::start(format!("Creating {service} on {name}"));
            let out: Value = client.send(
                "POST",
                &format!("/apps/{name}/addons"),
                &json!({ "provider": service, "plan": plan }),
            )?;
            spin.done(&release_suffix(&out));
            if json_out(json, &out)? {
                return Ok(());
            }
            let addon = &out["addon"];
            println!(
                "Created {} as {}",
                addon["name"].as_str().unwrap_or(""),
                config_var_list(addon)
            );
            println!(
                "Use `skiff addons:info {} -a {name}` to see it.",
                addon["name"].as_str().unwrap_or("")
            );
        }
        Action::Info { app, addon } => {
            let name = app.resolve()?;
            let value: Value = client.get(&format!("/apps/{name}/addons/{addon}"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            print_info(&value);
        }
        Action::Destroy {
            app,
            addon,
            confirm,
        } => {
            let name = app.resolve()?;
            if confirm.as_deref() != Some(name.as_str()) {
                bail!("this destroys {addon} and all its data; run again with --confirm {name}");
            }
            let spin = Spinner::start(format!("Destroying {addon} on {name}"));
            let out: Value = client.send(
                "DELETE",
                &format!("/apps/{name}/addons/{addon}"),
                &Value::Null,
            )?;
            spin.done(&release_suffix(&out));
        }
        Action::Rotate { app, addon } => {
            let name = app.resolve()?;
            let spin = Spinner::start(format!("Rotating the credentials of {addon} on {name}"));
            let out: Value = client.send(
                "POST",
                &format!("/apps/{name}/addons/{addon}/actions/rotate-credentials"),
                &json!({}),
            )?;
            spin.done(&release_suffix(&out));
        }
        Action::PgInfo(app) => {
            let name = app.resolve()?;
            let value: Value = client.get(&format!("/apps/{name}/addons/postgres"))?;
            if json_out(json, &value)? {
                return Ok(());
            }
            print_info(&value);
        }
        Action::PgPsql { app, command } => {
            let name = app.resolve()?;
            let config: std::collections::BTreeMap<String, String> =
                client.get(&format!("/apps/{name}/config"))?;
            let url = config.get("DATABASE_URL").with_context(|| {
                format!("{name} has no DATABASE_URL; add a database with `skiff addons:create postgres -a {name}`")
            })?;
            let psql = find_psql().context(
                "psql is not installed; install PostgreSQL's client (Debian: apt-get install postgresql-client)",
            )?;
            let mut cmd = std::process::Command::new(psql);
            cmd.arg(url);
            if let Some(c) = command {
                cmd.args(["-v", "ON_ERROR_STOP=1", "-c", &c]);
            }
            // psql takes over the terminal; Skiff has nothing left to do.
            let err = cmd.exec();
            bail!("running psql: {err}");
        }
    }
    Ok(())
}

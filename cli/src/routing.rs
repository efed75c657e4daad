//! Router settings of an app: maintenance mode, custom domains and features.

use anyhow::Result;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::Client;
use crate::commands::AppArg;

fn print_json(json: bool, value: &Value) -> Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(json)
}

pub(crate) fn maintenance(app: AppArg, json: bool) -> Result<()> {
    let name = app.resolve()?;
    let value: Value = Client::from_env()?.get(&format!("/apps/{name}/maintenance"))?;
    if print_json(json, &value)? {
        return Ok(());
    }
    let on = value.get("maintenance").and_then(Value::as_bool) == Some(true);
    println!("{}", if on { "on" } else { "off" });
    Ok(())
}

pub(crate) fn set_maintenance(app: AppArg, on: bool) -> Result<()> {
    let name = app.resolve()?;
    let verb = if on { "Enabling" } else { "Disabling" };
    eprint!("{verb} maintenance mode for {name}... ");
    let _: Value = Client::from_env()?.send(
        "PATCH",
        &format!("/apps/{name}/maintenance"),
        &json!({ "maintenance": on }),
    )?;
    eprintln!("done");
    Ok(())
}

#[derive(Deserialize)]
struct Domain {
    hostname: String,
    kind: String,
}

pub(crate) fn domains(app: AppArg, json: bool) -> Result<()> {
    let name = app.resolve()?;
    let value: Value = Client::from_env()?.get(&format!("/apps/{name}/domains"))?;
    if print_json(json, &value)? {
        return Ok(());
    }
    let domains: Vec<Domain> = serde_json::from_value(value)?;
    println!("=== {name} Skiff Domain");
    for d in domains.iter().filter(|d| d.kind == "default") {
        println!("{}", d.hostname);
    }
    let custom: Vec<&Domain> = domains.iter().filter(|d| d.kind == "custom").collect();
    if !custom.is_empty() {
        println!();
        println!("=== {name} Custom Domains");
        for d in custom {
            println!("{}", d.hostname);
        }
    }
    Ok(())
}

pub(crate) fn add_domain(app: AppArg, hostname: &str) -> Result<()> {
    let name = app.resolve()?;
    eprint!("Adding {hostname} to {name}... ");
    let d: Domain = Client::from_env()?.send(
        "POST",
        &format!("/apps/{name}/domains"),
        &json!({ "hostname": hostname }),
    )?;
    eprintln!("done");
    println!(
        "Point {} at this Skiff's router; requests with that Host header now reach {name}.",
        d.hostname
    );
    Ok(())
}

pub(crate) fn remove_domain(app: AppArg, hostname: &str) -> Result<()> {
    let name = app.resolve()?;
    eprint!("Removing {hostname} from {name}... ");
    let _: Value = Client::from_env()?.send(
        "DELETE",
        &format!("/apps/{name}/domains/{hostname}"),
        &Value::Null,
    )?;
    eprintln!("done");
    Ok(())
}

#[derive(Deserialize)]
struct Feature {
    name: String,
    description: String,
    enabled: bool,
}

pub(crate) fn features(app: AppArg, json: bool) -> Result<()> {
    let name = app.resolve()?;
    let value: Value = Client::from_env()?.get(&format!("/apps/{name}/features"))?;
    if print_json(json, &value)? {
        return Ok(());
    }
    let features: Vec<Feature> = serde_json::from_value(value)?;
    println!("=== App Features ({name})");
    let width = features.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in features {
        let mark = if f.enabled { "[+]" } else { "[ ]" };
        println!("{mark} {:width$}  {}", f.name, f.description);
    }
    Ok(())
}

pub(crate) fn set_feature(app: AppArg, feature: &str, enabled: bool) -> Result<()> {
    let name = app.resolve()?;
    let verb = if enabled { "Enabling" } else { "Disabling" };
    eprint!("{verb} {feature} for {name}... ");
    let _: Value = Client::from_env()?.send(
        "PATCH",
        &format!("/apps/{name}/features/{feature}"),
        &json!({ "enabled": enabled }),
    )?;
    eprintln!("done");
    Ok(())
}

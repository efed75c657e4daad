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
struct Cert {
    name: String,
    domains: Vec<String>,
    serves: Vec<String>,
    expires_at: i64,
    issuer: String,
    self_signed: bool,
}

fn fetch_certs(name: &str) -> Result<(Value, Vec<Cert>)> {
    let value: Value = Client::from_env()?.get(&format!("/apps/{name}/certs"))?;
    let certs = serde_json::from_value(value.clone())?;
    Ok((value, certs))
}

pub(crate) fn certs(app: AppArg, json: bool) -> Result<()> {
    let name = app.resolve()?;
    let (value, certs) = fetch_certs(&name)?;
    if print_json(json, &value)? {
        return Ok(());
    }
    if certs.is_empty() {
        println!("{name} has no SSL certificates.");
        println!("Add one with: skiff certs:add CERT.pem KEY.pem -a {name}");
        return Ok(());
    }
    let width = certs.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  Common Name(s)  Expires  Trusted", "Name");
    for c in &certs {
        println!(
            "{:width$}  {}  {}  {}",
            c.name,
            c.domains.join(", "),
            skiff_core::text::timestamp(c.expires_at),
            if c.self_signed { "False" } else { "True" }
        );
    }
    Ok(())
}

fn print_cert(c: &Cert) {
    println!("Certificate details:");
    println!("Name:           {}", c.name);
    println!("Common Name(s): {}", c.domains.join(", "));
    println!(
        "Expires At:     {}",
        skiff_core::text::timestamp(c.expires_at)
    );
    println!("Issuer:         {}", c.issuer);
    println!("Self signed:    {}", c.self_signed);
    let serves = if c.serves.is_empty() {
        "(none of the app's hosts)".to_owned()
    } else {
        c.serves.join(", ")
    };
    println!("Serves:         {serves}");
}

pub(crate) fn add_cert(
    app: AppArg,
    certificate: &std::path::Path,
    key: &std::path::Path,
    cert_name: Option<String>,
    json: bool,
) -> Result<()> {
    use anyhow::Context;
    let name = app.resolve()?;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let body = json!({
        "certificate": read(certificate)?,
        "private_key": read(key)?,
        "name": cert_name,
    });
    eprint!("Adding SSL certificate to {name}... ");
    let value: Value = Client::from_env()?.send("POST", &format!("/apps/{name}/certs"), &body)?;
    eprintln!("done");
    if print_json(json, &value)? {
        return Ok(());
    }
    print_cert(&serde_json::from_value(value)?);
    Ok(())
}

/// The certificate `--name` names, or the only one.
fn pick_cert(app: &str, wanted: Option<String>) -> Result<(Value, Cert)> {
    let (value, certs) = fetch_certs(app)?;
    let items = value.as_array().cloned().unwrap_or_default();
    let mut pairs: Vec<(Value, Cert)> = items.into_iter().zip(certs).collect();
    match wanted {
        Some(w) => pairs
            .into_iter()
            .find(|(_, c)| c.name == w)
            .ok_or_else(|| anyhow::anyhow!("{app} has no certificate named {w}")),
        None if pairs.len() == 1 => Ok(pairs.remove(0)),
        None if pairs.is_empty() => anyhow::bail!("{app} has no SSL certificates"),
        None => anyhow::bail!(
            "{app} has several certificates; choose one with --name ({})",
            pairs
                .iter()
                .map(|(_, c)| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(crate) fn cert_info(app: AppArg, cert_name: Option<String>, json: bool) -> Result<()> {
    let name = app.resolve()?;
    let (value, cert) = pick_cert(&name, cert_name)?;
    if print_json(json, &value)? {
        return Ok(());
    }
    print_cert(&cert);
    Ok(())
}

pub(crate) fn remove_cert(app: AppArg, cert_name: Option<String>) -> Result<()> {
    let name = app.resolve()?;
    let (_, cert) = pick_cert(&name, cert_name)?;
    eprint!("Removing SSL certificate {} from {name}... ", cert.name);
    let _: Value = Client::from_env()?.send(
        "DELETE",
        &format!("/apps/{name}/certs/{}", cert.name),
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

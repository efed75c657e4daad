//! The API document (docs/openapi.yaml) against the real server: every documented operation
//! exists and answers its example request with a documented status.

mod common;

use anyhow::{Context, Result, bail};
use common::*;
use serde_yaml_ng::Value;

#[test]
fn every_documented_operation_answers_as_documented() -> Result<()> {
    let s = Skiff::start()?;
    let token = std::fs::read_to_string(s.dir.path().join("data/admin-token"))?
        .trim()
        .to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for name in ["docs", "docs-spare"] {
        let resp = agent
            .post(format!("{}/apps", s.api()))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(format!(r#"{{"name":"{name}"}}"#))?;
        anyhow::ensure!(
            resp.status().as_u16() == 201,
            "creating {name}: {}",
            resp.status()
        );
    }

    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        repo_root().join("docs/openapi.yaml"),
    )?)?;
    let paths = doc["paths"].as_mapping().context("paths")?;
    let mut checked = 0;
    for (path, item) in paths {
        let path = path.as_str().context("path")?;
        for method in ["get", "post", "patch", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let example = op
                .get("x-skiff-example")
                .with_context(|| format!("{method} {path} has no x-skiff-example"))?;
            let mut url_path = path.to_owned();
            if let Some(params) = example.get("params").and_then(Value::as_mapping) {
                for (k, v) in params {
                    url_path = url_path.replace(
                        &format!("{{{}}}", k.as_str().unwrap_or("")),
                        v.as_str().unwrap_or(""),
                    );
                }
            }
            anyhow::ensure!(
                !url_path.contains('{'),
                "{method} {path}: example leaves a parameter unset"
            );
            let mut url = format!("{}{url_path}", s.api());
            if let Some(q) = example.get("query").and_then(Value::as_str) {
                url = format!("{url}?{q}");
            }
            let body = example
                .get("body")
                .map(|b| serde_json::to_string(&serde_json::to_value(b)?))
                .transpose()?;
            let auth = format!("Bearer {token}");
            let resp = match (method, body) {
                ("get", _) => agent.get(&url).header("authorization", &auth).call()?,
                ("delete", _) => agent.delete(&url).header("authorization", &auth).call()?,
                (m, body) => {
                    let req = if m == "post" {
                        agent.post(&url)
                    } else {
                        agent.patch(&url)
                    };
                    let req = req.header("authorization", &auth);
                    match body {
                        Some(b) => req.header("content-type", "application/json").send(b)?,
                        None => req.send_empty()?,
                    }
                }
            };
            let status = resp.status().as_u16();
            let expected = example
                .get("status")
                .and_then(Value::as_u64)
                .context("status")? as u16;
            if status != expected {
                bail!(
                    "{} {url_path}: expected {expected}, got {status}",
                    method.to_uppercase()
                );
            }
            let documented = op
                .get("responses")
                .and_then(Value::as_mapping)
                .is_some_and(|r| r.contains_key(Value::String(status.to_string())));
            anyhow::ensure!(
                documented,
                "{method} {path}: status {status} is not documented"
            );
            checked += 1;
        }
    }
    anyhow::ensure!(checked >= 25, "only {checked} operations were checked");

    // A path the document does not list is not served.
    let resp = agent
        .get(format!("{}/apps/docs/nothing-here", s.api()))
        .header("authorization", format!("Bearer {token}"))
        .call()?;
    assert_eq!(resp.status().as_u16(), 404);
    Ok(())
}

//! Load with deploys and scaling: `skiff bench load` drives apps through the router while a
//! driver pushes releases and scales them; no request may fail, whatever its timing. The
//! bench prints req/s; these tests assert only correctness (zero failed requests).

mod common;

use std::process::Command;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;

/// Runs `skiff bench load` with `args` and returns its JSON result, printing its table.
fn bench_load(args: &[&str]) -> Result<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["bench", "load", "--json"])
        .args(args)
        // The static buildpack's file server is built once per checkout, as for the other tests.
        .env(
            "SKIFF_TOOLCHAINS_DIR",
            repo_root().join("target").join("test-toolchains"),
        )
        .env_remove("SKIFF_API_URL")
        .env_remove("SKIFF_API_TOKEN")
        .output()?;
    let text = stdout(&out);
    println!("{text}");
    ensure!(
        out.status.success(),
        "bench load failed:\n{text}\n{}",
        stderr(&out)
    );
    let json = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line")?;
    Ok(serde_json::from_str(json)?)
}

fn assert_clean(result: &Value) {
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["undocumented"], 0, "{result}");
    assert!(result["ok"].as_u64().unwrap_or(0) > 0, "{result}");
    assert!(
        result["driver_errors"]
            .as_array()
            .is_some_and(|e| e.is_empty()),
        "{result}"
    );
    assert!(result["deploys"].as_u64().unwrap_or(0) >= 1, "{result}");
    assert!(result["scales"].as_u64().unwrap_or(0) >= 1, "{result}");
}

/// 2 apps x 2 dynos for a few seconds, with at least one deploy and one scale mid-traffic.
#[test]
fn deploys_and_scaling_drop_no_request() -> Result<()> {
    let result = bench_load(&[
        "--apps",
        "2",
        "--dynos",
        "2",
        "--seconds",
        "6",
        "--connections",
        "4",
    ])?;
    assert_clean(&result);
    Ok(())
}

/// The long version: more apps, dynos, connections and time. `cargo test --test load -- --ignored`.
#[test]
#[ignore = "long: about two minutes"]
fn long_load_drops_no_request() -> Result<()> {
    let result = bench_load(&[
        "--apps",
        "6",
        "--dynos",
        "3",
        "--seconds",
        "90",
        "--connections",
        "16",
    ])?;
    assert_clean(&result);
    Ok(())
}

/// The isolation bench end to end: every phase runs and the calm app never fails. Ratios are
/// printed, not asserted. `cargo test --test load -- --ignored`.
#[test]
#[ignore = "long: builds two guests and runs eighteen phases"]
fn isolation_bench_keeps_the_calm_app_answering() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "bench",
            "isolation",
            "--requests",
            "1000",
            "--repeats",
            "1",
            "--json",
        ])
        .env_remove("SKIFF_API_URL")
        .env_remove("SKIFF_API_TOKEN")
        .output()?;
    let text = stdout(&out);
    println!("{text}");
    ensure!(out.status.success(), "{text}\n{}", stderr(&out));
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 9, "{text}");
    for row in &rows {
        assert_eq!(row["calm_errors"], 0, "{row}");
    }
    Ok(())
}

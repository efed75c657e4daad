//! `skiff logs` and the drain commands.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::client::Client;
use crate::commands::AppArg;

#[derive(clap::Args, Debug)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    app: AppArg,
    /// How many recent lines to show (at most 1500).
    #[arg(short = 'n', long = "num", default_value_t = 100)]
    num: usize,
    /// Keep the connection open and print new lines as they arrive.
    #[arg(short, long)]
    tail: bool,
    /// Only lines from this source.
    #[arg(short, long, value_parser = ["app", "router", "build", "platform"])]
    source: Option<String>,
    /// Only lines from this dyno (`web.1`), or every dyno of a type (`web`).
    #[arg(short, long)]
    dyno: Option<String>,
}

pub(crate) fn run(args: LogsArgs) -> Result<()> {
    let name = args.app.resolve()?;
    let mut query = vec![("lines", args.num.to_string())];
    if args.tail {
        query.push(("tail", "true".into()));
    }
    if let Some(s) = args.source {
        query.push(("source", s));
    }
    if let Some(d) = args.dyno {
        query.push(("dyno", d));
    }
    let body = Client::from_env()?.get_reader(&format!("/apps/{name}/logs"), &query)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in BufReader::new(body).lines() {
        let line = line.context("reading the log stream")?;
        // Flushing each line is what makes --tail live when stdout is a pipe.
        let written = writeln!(out, "{line}").and_then(|()| out.flush());
        if let Err(e) = written {
            // `skiff logs -t | head` closing the pipe is a normal way to stop.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Drain {
    url: String,
    token: String,
    dropped: u64,
}

pub(crate) fn list_drains(app: AppArg) -> Result<()> {
    let name = app.resolve()?;
    let drains: Vec<Drain> = Client::from_env()?.get(&format!("/apps/{name}/drains"))?;
    if drains.is_empty() {
        println!("{name} has no drains.");
        return Ok(());
    }
    println!("=== {name} Drains");
    for d in drains {
        if d.dropped > 0 {
            println!("{} ({}, {} lines dropped)", d.url, d.token, d.dropped);
        } else {
            println!("{} ({})", d.url, d.token);
        }
    }
    Ok(())
}

pub(crate) fn add_drain(app: AppArg, url: &str) -> Result<()> {
    let name = app.resolve()?;
    let drain: Drain = Client::from_env()?.send(
        "POST",
        &format!("/apps/{name}/drains"),
        &serde_json::json!({ "url": url }),
    )?;
    println!("Successfully added drain {} ({})", drain.url, drain.token);
    Ok(())
}

pub(crate) fn remove_drain(app: AppArg, url: &str) -> Result<()> {
    let name = app.resolve()?;
    let _: serde_json::Value =
        Client::from_env()?.delete(&format!("/apps/{name}/drains"), &[("url", url.to_owned())])?;
    println!("Successfully removed drain {url}");
    Ok(())
}

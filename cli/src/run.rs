//! `skiff run`: a one-off dyno. Output streams to this terminal; the guest's exit code becomes
//! this command's.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::Client;
use crate::commands::AppArg;

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    app: AppArg,
    /// Send output to the app's logs instead of this terminal.
    #[arg(short, long)]
    detach: bool,
    /// Stop the run after this many seconds (default 3600).
    #[arg(long)]
    timeout: Option<u64>,
    /// A process type, a component in the app (`bin/tasks.wasm`), or a name under `bin/`,
    /// then its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub(crate) fn run(args: RunArgs) -> Result<u8> {
    let name = args.app.resolve()?;
    let client = Client::from_env()?;
    let (command, rest) = args.command.split_first().context("no command given")?;
    let body = json!({
        "command": command,
        "args": rest,
        "detach": args.detach,
        "timeout_secs": args.timeout,
    });
    eprint!("Running {} on {name}... ", args.command.join(" "));
    let resp = client
        .agent()
        .post(format!("{}/apps/{name}/dynos", client.base()))
        .header("authorization", format!("Bearer {}", client.token()))
        .header("content-type", "application/json")
        .send(body.to_string())
        .with_context(|| format!("cannot reach the Skiff API at {}", client.base()))?;
    let status = resp.status();
    let dyno = resp
        .headers()
        .get("x-skiff-dyno")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("run")
        .to_owned();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    if !status.is_success() {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text)?;
        eprintln!();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        bail!("{message}");
    }
    if args.detach {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text)?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        eprintln!(
            "done, {}",
            v.get("name").and_then(Value::as_str).unwrap_or("run")
        );
        eprintln!("Run `skiff logs -a {name}` to see its output.");
        return Ok(0);
    }
    eprintln!("up, {dyno}");
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection to the platform ended before the run finished");
        }
        let event: Value =
            serde_json::from_str(line.trim()).context("unexpected output from the platform")?;
        if let Some(text) = event.get("stdout").and_then(Value::as_str) {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        } else if let Some(text) = event.get("stderr").and_then(Value::as_str) {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()?;
        } else if let Some(code) = event.get("exit").and_then(Value::as_i64) {
            if let Some(error) = event.get("error").and_then(Value::as_str) {
                eprintln!(" !    {error}");
            }
            return Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(1));
        }
    }
}

//! `skiff hook pre-receive`: run by git-receive-pack inside an app repository. It sends the
//! pushed commit's tree to the platform, relays the build output (git shows it as `remote:`
//! lines), and exits non-zero on a failed build so git rejects the push.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};

use skiff_core::BUILD_RESULT_MARKER;

const ZERO: &str = "0000000000000000000000000000000000000000";

pub(crate) fn run(name: &str) -> ExitCode {
    if name != "pre-receive" {
        eprintln!(" !     unknown hook {name}");
        return ExitCode::FAILURE;
    }
    match pre_receive() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!(" !     {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn pre_receive() -> anyhow::Result<bool> {
    let url = std::env::var("SKIFF_HOOK_URL")?;
    let token = std::env::var("SKIFF_HOOK_TOKEN")?;
    let app = std::env::var("SKIFF_APP")?;
    let mut ok = true;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        let (Some(_old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let deployable = refname == "refs/heads/main" || refname == "refs/heads/master";
        if !deployable {
            eprintln!(
                "Pushed to non-deployable branch {refname}; push to main (or master) to deploy."
            );
            continue;
        }
        if new.trim_start_matches('0').is_empty() || new == ZERO {
            eprintln!(" !     Deleting {refname} is not allowed: it is what {app} deploys from.");
            ok = false;
            continue;
        }
        ok &= build(&url, &token, &app, new)?;
    }
    Ok(ok)
}

fn build(url: &str, token: &str, app: &str, commit: &str) -> anyhow::Result<bool> {
    eprintln!("Building source:");
    // Objects of the push are still in quarantine; git passes this process the environment
    // that lets `git archive` see them.
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut tar = archive
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("git archive gave no output"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(format!("{url}/apps/{app}/builds?commit={commit}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-tar")
        .header(
            "x-skiff-pusher",
            std::env::var("SKIFF_PUSHER").unwrap_or_default(),
        )
        .send(ureq::SendBody::from_reader(&mut tar));
    let _ = archive.wait();
    let resp = resp?;
    let status = resp.status();
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut outcome = None;
    let stderr = std::io::stderr();
    for line in reader.lines() {
        let line = line?;
        if let Some(result) = line.strip_prefix(BUILD_RESULT_MARKER) {
            outcome = Some(result.starts_with("ok"));
            continue;
        }
        let mut err = stderr.lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }
    if !status.is_success() {
        eprintln!(" !     The platform refused the build (HTTP {status}).");
        return Ok(false);
    }
    match outcome {
        Some(ok) => Ok(ok),
        None => {
            eprintln!(
                " !     The build stream ended without a result; the platform may have stopped."
            );
            Ok(false)
        }
    }
}

//! The app's maintenance tasks, run as one-off dynos (`skiff run -- tasks migrate`) or as the
//! release phase (`release: bin/tasks.wasm migrate` in the Procfile).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let app = std::env::var("SKIFF_APP").unwrap_or_else(|_| "this app".to_owned());
    match args.first().map(String::as_str) {
        Some("migrate") => {
            println!("Migrating {app}...");
            if std::env::var("FAIL_MIGRATIONS").is_ok_and(|v| !v.is_empty()) {
                eprintln!("migration 002_add_index failed: FAIL_MIGRATIONS is set");
                return ExitCode::FAILURE;
            }
            println!("Migrations up to date.");
            ExitCode::SUCCESS
        }
        Some("env") => {
            for name in &args[1..] {
                println!("{name}={}", std::env::var(name).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Some("work") => {
            // A background worker: runs until the platform stops it.
            for beat in 1.. {
                println!("worker heartbeat {beat}");
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
            ExitCode::SUCCESS
        }
        Some("sleep") => {
            // A slow release phase, e.g. a long migration.
            let secs = args.get(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(1);
            println!("sleeping {secs}s");
            std::thread::sleep(std::time::Duration::from_secs(secs));
            ExitCode::SUCCESS
        }
        Some("exit") => {
            let code = args.get(1).and_then(|c| c.parse::<u8>().ok()).unwrap_or(1);
            eprintln!("exiting with {code}");
            ExitCode::from(code)
        }
        _ => {
            eprintln!("usage: tasks migrate | tasks work | tasks env NAME... | tasks sleep SECS | tasks exit CODE");
            ExitCode::from(2)
        }
    }
}

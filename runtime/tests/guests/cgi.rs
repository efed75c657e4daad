//! A CGI program for the runtime's tests, built with `rustc --target wasm32-wasip2` (std only).
//! What it does depends on PATH_INFO.

use std::io::{Read, Write};

fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match path.as_str() {
        "/env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            write!(out, "Content-Type: text/plain\r\n\r\n").unwrap();
            for (k, v) in vars {
                writeln!(out, "{k}={v}").unwrap();
            }
            let args: Vec<String> = std::env::args().collect();
            writeln!(out, "ARGV={}", args.join(" ")).unwrap();
        }
        "/echo" => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).unwrap();
            write!(out, "Content-Type: application/octet-stream\n\n").unwrap();
            out.write_all(&body).unwrap();
        }
        "/status" => {
            write!(
                out,
                "Status: 201 Created\r\nX-Custom: yes\r\nContent-Type: text/plain\r\n\r\ncreated"
            )
            .unwrap();
        }
        "/redirect" => write!(out, "Location: http://example.invalid/next\n\n").unwrap(),
        "/malformed" => write!(out, "this is not a header\n\nbody").unwrap(),
        "/silent" => {}
        "/exit3" => std::process::exit(3),
        "/panic" => panic!("the guest panicked on purpose"),
        "/spin" => {
            let mut n = 0u64;
            loop {
                n = n.wrapping_add(1);
                std::hint::black_box(n);
            }
        }
        "/stream" => {
            write!(out, "Content-Type: text/plain\n\nfirst\n").unwrap();
            out.flush().unwrap();
            let mut n = 0u64;
            loop {
                n = n.wrapping_add(1);
                std::hint::black_box(n);
            }
        }
        "/big" => {
            write!(out, "Content-Type: text/plain\n\n").unwrap();
            let line = [b'x'; 1023];
            for _ in 0..1024 {
                out.write_all(&line).unwrap();
                out.write_all(b"\n").unwrap();
            }
        }
        "/stderr" => {
            eprintln!("a line for the logs");
            // Longer than a log line may be: the host cuts it before any sink sees it.
            eprintln!("{}", "y".repeat(20_000));
            write!(out, "Content-Type: text/plain\n\nlogged").unwrap();
        }
        "/files" => {
            std::fs::write("/tmp/note", "written to tmp").unwrap();
            let tmp = std::fs::read_to_string("/tmp/note").unwrap();
            let app = std::fs::read_to_string("/app/hello.txt").unwrap();
            let app_write = std::fs::write("/app/evil", "x").is_err();
            write!(out, "Content-Type: text/plain\n\n{tmp}|{app}|app read-only: {app_write}").unwrap();
        }
        "/memory" => {
            let big = std::hint::black_box(vec![1u8; 64 << 20]);
            write!(out, "Content-Type: text/plain\n\n{}", big.len()).unwrap();
        }
        _ => write!(out, "Status: 404 Not Found\nContent-Type: text/plain\n\nno route").unwrap(),
    }
}

//! The sample app Skiff deploys with `skiff up --demo`: a plain Rust web app that becomes a
//! `wasi:http` component. Push it with `git push skiff main`.

use serde::Serialize;
use wstd::http::body::Body;
use wstd::http::{Error, Method, Request, Response, StatusCode};

const GREETING: &str = "Hello from Skiff!";

#[derive(Serialize)]
struct Info<'a> {
    app: &'a str,
    greeting: &'a str,
    method: String,
    path: String,
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_owned();
    // One line per request on stderr: Skiff shows it in `skiff logs` as app[web.1].
    eprintln!("{} {path}", request.method());
    match (request.method(), path.as_str()) {
        (&Method::GET, "/") => text(StatusCode::OK, format!("{GREETING}\n")),
        (&Method::GET, "/json") => {
            let app = std::env::var("SKIFF_APP").unwrap_or_default();
            let info = Info {
                app: &app,
                greeting: GREETING,
                method: request.method().to_string(),
                path,
            };
            let body = Body::from_json(&info)?;
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(body)?)
        }
        (&Method::POST, "/echo") => {
            let body = request.into_body().bytes_contents().await?;
            Ok(Response::new(Body::from(body)))
        }
        // A slow answer, for trying the router's timeouts: /sleep?ms=1500 (at most a minute).
        (&Method::GET, "/sleep") => {
            let ms = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(60_000);
            wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms}ms\n"))
        }
        // The request headers as the app sees them, one `name: value` per line.
        (&Method::GET, "/headers") => {
            let mut out = String::new();
            for (name, value) in request.headers() {
                out.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
            }
            text(StatusCode::OK, out)
        }
        // A crash takes down this request only: the next one gets a fresh instance.
        (&Method::GET, "/crash") => panic!("crashing on purpose"),
        (&Method::GET, p) if p.starts_with("/env/") => {
            let name = &p["/env/".len()..];
            match std::env::var(name) {
                Ok(value) => text(StatusCode::OK, format!("{value}\n")),
                Err(_) => text(StatusCode::NOT_FOUND, format!("{name} is not set\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(body))?)
}

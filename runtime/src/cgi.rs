//! The CGI executor: a web dyno whose component is a `wasi:cli/run` command serves each request
//! by running it once, CGI/1.1 style (RFC 3875). The request line and headers become
//! environment variables, the body streams to stdin, and stdout is read as a CGI response: a
//! header block (`Status:`, `Location:`, any other header) ended by a blank line, then the body,
//! which streams to the client as the program writes it. Stderr goes to the app's logs.
//!
//! This is how Go's `net/http/cgi`, C CGI programs and interpreters that cannot export
//! `wasi:http` serve the web. Each run gets the same fences as a `wasi:http` request: a fresh
//! instance from the pre-linked command, the dyno size's memory, the request deadline, fuel,
//! the dyno's concurrency slot, private `/tmp`, read-only `/app` and the outbound policy.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::dyno::{
    ClientBody, Conn, DynoSpec, DynoState, GuestStore, ResponseBody, emit_lines, guest_wasi,
    log_failure, report_dropped,
};
use crate::limits::Failure;
use crate::logpipe::LogPipe;
use skiff_core::cgi::{head_end, preview};

/// The header block may not grow past this; a program that writes more without a blank line
/// is not speaking CGI.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// A request body without a declared length is read up to this size so the program can be
/// given `CONTENT_LENGTH`, which CGI requires whenever there is a body.
const MAX_UNSIZED_BODY: usize = 8 << 20;

/// Bytes in flight between the host and the program, each way.
const PIPE_BUFFER: usize = 64 << 10;

const SERVER_SOFTWARE: &str = concat!("Skiff/", env!("CARGO_PKG_VERSION"));

/// How a run ended.
enum GuestEnd {
    /// `run` returned, or the program called `exit`.
    Exited(i32),
    /// A trap or a fence.
    Failed(Failure),
}

/// What goes to the program's stdin.
enum Stdin {
    Empty,
    Streamed(ClientBody),
    Buffered(Bytes),
}

/// The program's stderr, captured for the logs and emitted exactly once, whether the run ends
/// by itself or is stopped early.
struct Stderr {
    pipe: LogPipe,
    emitted: AtomicBool,
}

impl Stderr {
    fn emit(&self, spec: &DynoSpec) {
        if !self.emitted.swap(true, Ordering::Relaxed) {
            emit_lines(spec, "stderr", &self.pipe.contents());
            report_dropped(spec, self.pipe.dropped());
        }
    }
}

/// Serves one request by running the command once.
pub(crate) async fn serve(
    spec: &Arc<DynoSpec>,
    pre: CommandPre<DynoState>,
    fuel: bool,
    addons: crate::addons::GuestAddons,
    conn: Conn,
    slot: OwnedSemaphorePermit,
    req: hyper::Request<ClientBody>,
) -> Result<hyper::Response<ResponseBody>, Failure> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (stdin, content_length) = match declared {
        Some(n) => (Stdin::Streamed(body), Some(n)),
        None if body.is_end_stream() => (Stdin::Empty, None),
        // A chunked body: CGI has no way to say "length unknown", so it is read first.
        None => match http_body_util::Limited::new(body, MAX_UNSIZED_BODY)
            .collect()
            .await
        {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let len = bytes.len() as u64;
                (Stdin::Buffered(bytes), Some(len))
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large: send a Content-Length for bodies over 8 MiB.\n",
                ));
            }
            Err(_) => {
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    "The request body could not be read.\n",
                ));
            }
        },
    };

    let env = cgi_env(spec, &parts, conn, content_length);
    let (stdin_guest, stdin_host) = tokio::io::duplex(PIPE_BUFFER);
    let (stdout_guest, mut stdout_host) = tokio::io::duplex(PIPE_BUFFER);
    let stderr = Arc::new(Stderr {
        pipe: LogPipe::new(spec.limits.log_bytes),
        emitted: AtomicBool::new(false),
    });
    let mut wasi = guest_wasi(spec, &env)?;
    wasi.args(&spec.args)
        .stdin(AsyncStdinStream::new(stdin_guest))
        .stdout(AsyncStdoutStream::new(PIPE_BUFFER, stdout_guest))
        .stderr(stderr.pipe.clone());
    let mut guest = GuestStore::new(spec, pre.engine(), wasi.build(), fuel, addons)?;

    tokio::spawn(feed_stdin(stdin, stdin_host));

    let turn = guest.turn.clone();
    let task = {
        let spec = spec.clone();
        let stderr = stderr.clone();
        let turn = turn.clone();
        tokio::spawn(async move {
            // The slot stays taken until the program has finished, body included.
            let _slot = slot;
            let store = &mut guest.store;
            let run = crate::limits::taking_turns(&turn, async {
                let command = pre.instantiate_async(&mut *store).await?;
                command.wasi_cli_run().call_run(&mut *store).await
            });
            // Epochs stop a program that computes too long; this also stops one that waits
            // forever on a host call (a request body that never comes).
            let result = crate::limits::by_deadline(&turn, std::time::Duration::ZERO, run).await;
            guest.report_fuel(&spec);
            let end = match result {
                None => GuestEnd::Failed(Failure::Timeout),
                Some(Ok(Ok(()))) => GuestEnd::Exited(0),
                Some(Ok(Err(()))) => GuestEnd::Exited(1),
                Some(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(exit) => GuestEnd::Exited(exit.0),
                    None => GuestEnd::Failed(guest.classify(&e)),
                },
            };
            // Dropping the store closes the program's stdout: the reader sees the end. Its
            // teardown and the logging of its stderr run on its app's share of the cores.
            crate::limits::in_turn(&turn, || {
                drop(guest);
                stderr.emit(&spec);
            })
            .await;
            end
        })
    };

    let mut buf = BytesMut::with_capacity(8 << 10);
    let body_start = loop {
        if let Some(end) = head_end(&buf) {
            break Some(end);
        }
        if buf.len() > MAX_HEAD_BYTES {
            task.abort();
            stderr.emit(spec);
            return Err(Failure::BadResponse(format!(
                "the CGI header block is longer than {} KiB without the blank line that ends it",
                MAX_HEAD_BYTES >> 10
            )));
        }
        match stdout_host.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    let Some(body_start) = body_start else {
        let end = task
            .await
            .unwrap_or_else(|e| GuestEnd::Failed(Failure::Crash(format!("the run failed: {e}"))));
        return Err(match end {
            GuestEnd::Failed(failure) => failure,
            GuestEnd::Exited(code) if code != 0 => Failure::Crash(format!(
                "the program exited with status {code} before writing a response"
            )),
            GuestEnd::Exited(_) if buf.is_empty() => {
                Failure::BadResponse("the program exited without writing a response".into())
            }
            GuestEnd::Exited(_) => Failure::BadResponse(format!(
                "the program's output has no blank line ending its CGI headers; it begins {:?}",
                preview(&buf)
            )),
        });
    };
    let head = match parse_head(&buf[..body_start]) {
        Ok(head) => head,
        Err(message) => {
            task.abort();
            stderr.emit(spec);
            return Err(Failure::BadResponse(message));
        }
    };
    let rest = buf.split_off(body_start).freeze();

    let (tx, rx) = mpsc::channel(4);
    let spec = spec.clone();
    tokio::spawn(async move {
        let mut client_gone = !rest.is_empty() && tx.send(Ok(Frame::data(rest))).await.is_err();
        let mut chunk = BytesMut::with_capacity(16 << 10);
        while !client_gone {
            chunk.reserve(16 << 10);
            match stdout_host.read_buf(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    client_gone = tx
                        .send(Ok(Frame::data(chunk.split().freeze())))
                        .await
                        .is_err()
                }
            }
        }
        if client_gone {
            // Nobody reads the rest: stop the program instead of letting it run to its deadline.
            task.abort();
            stderr.emit(&spec);
            tracing::debug!(app = %spec.app, dyno = %spec.name, method = %parts.method, path = parts.uri.path(), "client left before the CGI body ended");
            return;
        }
        let end = task
            .await
            .unwrap_or_else(|e| GuestEnd::Failed(Failure::Crash(format!("the run failed: {e}"))));
        match end {
            GuestEnd::Exited(0) => {}
            GuestEnd::Exited(code) => spec.log.line(
                &spec.app,
                &spec.name,
                &format!(
                    "Process exited with status {code} after answering {} {}",
                    parts.method,
                    parts.uri.path()
                ),
            ),
            GuestEnd::Failed(failure) => {
                log_failure(&spec, &parts.method, parts.uri.path(), &failure);
                // The head is gone already: cut the body so the client sees it is incomplete.
                let _ = tx
                    .send(Err(wasmtime_wasi_http::Error::InternalError(Some(
                        failure.describe(),
                    ))))
                    .await;
            }
        }
    });

    turn.deadline.renew();
    let mut resp =
        hyper::Response::new(crate::limits::Renewing::new(ChannelBody(rx), turn).boxed_unsync());
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// Copies the request body to the program's stdin; dropping `to` is the program's EOF.
async fn feed_stdin(stdin: Stdin, mut to: DuplexStream) {
    match stdin {
        Stdin::Empty => {}
        Stdin::Buffered(bytes) => {
            let _ = to.write_all(&bytes).await;
        }
        Stdin::Streamed(mut body) => {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data()
                    && to.write_all(&data).await.is_err()
                {
                    // The program exited without reading everything; that is its right.
                    break;
                }
            }
        }
    }
}

/// A response body fed by the stdout reader.
struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// A plain-text answer from the dyno itself (not from the program).
fn plain(status: StatusCode, text: &'static str) -> hyper::Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The program's environment: the dyno's own (config vars, Skiff's variables), then the
/// CGI/1.1 meta-variables, which win over a config var of the same name.
fn cgi_env(
    spec: &DynoSpec,
    parts: &http::request::Parts,
    conn: Conn,
    content_length: Option<u64>,
) -> Vec<(String, String)> {
    let headers = &parts.headers;
    let text = |name: &HeaderName| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    };
    let host = text(&header::HOST).unwrap_or_default();
    let (server_name, host_port) = split_host(&host);
    let server_port = text(&HeaderName::from_static("x-forwarded-port"))
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .or(host_port)
        .unwrap_or_else(|| conn.port.to_string());
    let https = text(&HeaderName::from_static("x-forwarded-proto"))
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    // The router appends the address it saw to X-Forwarded-For; entries before it are the
    // client's own claims, so only the last one is trusted.
    let remote = text(&HeaderName::from_static("x-forwarded-for"))
        .and_then(|v| {
            v.rsplit(',')
                .next()
                .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        })
        .unwrap_or(conn.peer.ip());
    let protocol = match parts.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    let path = parts.uri.path();
    let request_uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".into());

    let mut cgi: Vec<(String, String)> = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_SOFTWARE".into(), SERVER_SOFTWARE.into()),
        ("SERVER_PROTOCOL".into(), protocol.into()),
        ("SERVER_NAME".into(), server_name),
        ("SERVER_PORT".into(), server_port),
        ("REQUEST_METHOD".into(), parts.method.as_str().into()),
        ("REQUEST_URI".into(), request_uri),
        (
            "REQUEST_SCHEME".into(),
            if https { "https" } else { "http" }.into(),
        ),
        // The program is the whole app, mounted at the root.
        ("SCRIPT_NAME".into(), String::new()),
        ("PATH_INFO".into(), percent_decode(path)),
        (
            "QUERY_STRING".into(),
            parts.uri.query().unwrap_or("").into(),
        ),
        ("REMOTE_ADDR".into(), remote.to_string()),
        ("DOCUMENT_ROOT".into(), "/app".into()),
        ("PORT".into(), conn.port.to_string()),
    ];
    if https {
        cgi.push(("HTTPS".into(), "on".into()));
    }
    if let Some(ct) = text(&header::CONTENT_TYPE) {
        cgi.push(("CONTENT_TYPE".into(), ct));
    }
    if let Some(len) = content_length {
        cgi.push(("CONTENT_LENGTH".into(), len.to_string()));
    }
    for name in headers.keys() {
        // Content type and length have their own variables. `Proxy` would become HTTP_PROXY,
        // which HTTP client libraries read as their proxy setting ("httpoxy").
        if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH || name == "proxy" {
            continue;
        }
        let separator = if name == header::COOKIE { "; " } else { ", " };
        let value = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(separator);
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        cgi.push((key, value));
    }
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .filter(|(k, _)| !cgi.iter().any(|(c, _)| c == k))
        .cloned()
        .collect();
    env.extend(cgi);
    env
}

/// `host[:port]` (or `[v6]:port`) into its name and port.
fn split_host(host: &str) -> (String, Option<String>) {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => (format!("[{v6}]"), tail.strip_prefix(':')),
            None => (host.to_owned(), None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    let port = port
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned);
    (name, port)
}

/// PATH_INFO carries the decoded path (RFC 3875 4.1.5); bytes that are not UTF-8 are replaced.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed CGI header block, in the HTTP server's types.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    headers: HeaderMap,
}

/// Parses the header block (up to and including its blank line). The parsing itself is
/// `skiff_core::cgi`, where it is fuzzed; its names and values follow the `http` crate's rules,
/// so the conversions below only fail if the two ever disagree.
fn parse_head(block: &[u8]) -> Result<Head, String> {
    let parsed = skiff_core::cgi::parse_head(block)?;
    let status = StatusCode::from_u16(parsed.status).map_err(|_| {
        format!(
            "the CGI Status header is not a status code: {}",
            parsed.status
        )
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in parsed.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("CGI header name {name:?} is invalid"))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| format!("CGI header {name} has a value with control characters"))?;
        headers.append(name, value);
    }
    Ok(Head { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_location_and_headers() {
        let head = parse_head(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers["content-type"], "text/plain");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(head.headers.get("status").is_none());

        let head = parse_head(b"Location: /elsewhere\n\n").expect("parses");
        assert_eq!(head.status, StatusCode::FOUND);
        assert_eq!(head.headers["location"], "/elsewhere");

        let head =
            parse_head(b"Content-Type: text/html\nTransfer-Encoding: chunked\n\n").expect("parses");
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.headers.get("transfer-encoding").is_none());
    }

    /// Whatever the core parser accepts converts to the server's header types: the two
    /// follow the same rules, checked over the fuzz corpus and deterministic mutations of it.
    #[test]
    fn core_heads_always_convert() {
        use skiff_core::fuzzing::{XorShift, mutate, seeds};
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/cgi_head");
        let seeds = seeds(&corpus);
        assert!(!seeds.is_empty());
        let mut rng = XorShift::new(3);
        for i in 0..5000 {
            let input = if i < seeds.len() {
                seeds[i].clone()
            } else {
                mutate(&seeds[rng.below(seeds.len())], &mut rng)
            };
            if skiff_core::cgi::parse_head(&input).is_ok() {
                assert!(
                    parse_head(&input).is_ok(),
                    "core accepted what http refuses: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            for name in input.split(|&b| b == b':' || b == b'\n') {
                let core_ok = !name.is_empty()
                    && name.len() < 1 << 16
                    && name.iter().all(|&b| skiff_core::cgi::is_token_byte(b));
                assert_eq!(core_ok, HeaderName::from_bytes(name).is_ok(), "{name:?}");
                let value_ok = name.iter().all(|&b| skiff_core::cgi::is_value_byte(b));
                assert_eq!(value_ok, HeaderValue::from_bytes(name).is_ok(), "{name:?}");
            }
        }
    }

    #[test]
    fn splits_hosts_and_decodes_paths() {
        assert_eq!(
            split_host("app.localhost:8080"),
            ("app.localhost".into(), Some("8080".into()))
        );
        assert_eq!(split_host("app.localhost"), ("app.localhost".into(), None));
        assert_eq!(split_host("[::1]:80"), ("[::1]".into(), Some("80".into())));
        assert_eq!(percent_decode("/a%20b/%zz/%41"), "/a b/%zz/A");
    }
}

//! Log drains: each drain of an app gets the app's lines through a bounded queue and a
//! background task that sends them in batches, as RFC 5424 syslog with octet counting, over
//! TCP (`syslog+tcp://`) or in HTTP POSTs shaped like Heroku's `application/logplex-1`
//! (`http://`). A slow or dead drain only ever loses its own lines: the hub's `try_send` never
//! waits, and what does not fit is dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::logs::{LogLine, Source, rfc3339_micros};
use crate::{Platform, PlatformError};

/// Lines a drain may have queued before new ones are dropped.
const QUEUE_LINES: usize = 2_000;
/// Lines per TCP write or HTTP POST.
const MAX_BATCH: usize = 200;
/// One delivery (connect, write, and for HTTP the response) must finish within this.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between retries of an unreachable drain.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where a drain delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// RFC 5424 frames with octet counting (RFC 6587) on one long-lived TCP connection.
    Syslog { host: String, port: u16 },
    /// One POST per batch.
    Http {
        host: String,
        port: u16,
        /// Path and query.
        path: String,
        /// `user:password` from the URL, sent as basic auth.
        userinfo: Option<String>,
    },
}

impl Target {
    /// Parses `syslog+tcp://host:port` or `http://[user:pass@]host[:port][/path]`.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("{url:?} is not a URL; use syslog+tcp://HOST:PORT or http://HOST/PATH")
        })?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "https" || scheme == "syslog+tls" {
            return Err(format!(
                "{scheme}:// drains are not supported yet: Skiff has no TLS client. Use http:// or syslog+tcp:// (for example to a local forwarder that adds TLS)"
            ));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        {
            return Err(format!("{url:?} has no valid host"));
        }
        match scheme.as_str() {
            "syslog+tcp" | "syslog" => {
                let port = port.ok_or_else(|| format!("{url:?} needs a port"))?;
                Ok(Self::Syslog { host, port })
            }
            "http" => {
                let path = if path.is_empty() {
                    "/".to_owned()
                } else if path.starts_with('?') {
                    format!("/{path}")
                } else {
                    path.to_owned()
                };
                if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    return Err(format!("{url:?} has spaces or control characters"));
                }
                Ok(Self::Http {
                    host,
                    port: port.unwrap_or(80),
                    path,
                    userinfo,
                })
            }
            other => Err(format!(
                "unsupported drain scheme {other}://; use syslog+tcp:// or http://"
            )),
        }
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("{p:?} is not a port");
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{hostport:?} is not a host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port(p))?),
            None => None,
        };
        return Ok((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_owned(), Some(p.parse().map_err(|_| bad_port(p))?))),
        None => Ok((hostport.to_owned(), None)),
    }
}

/// A fresh drain token, sent to HTTP drains as `Logplex-Drain-Token` like Heroku's `d.` ids.
pub(crate) fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!("d.{}", hex::encode(b)))
}

/// One app line as an RFC 5424 message: the app name is the HOSTNAME, `app` or `skiff` the
/// APP-NAME and the dyno the PROCID, as Heroku sends them.
pub(crate) fn syslog_message(app: &str, line: &LogLine) -> String {
    // user.info for the app's output, local7.info for Skiff's own lines (Heroku's choice).
    let pri = match line.source {
        Source::App => 14,
        Source::Router | Source::Build | Source::Platform => 190,
    };
    format!(
        "<{pri}>1 {} {app} {} {} - - {}",
        rfc3339_micros(line.time_us),
        line.source.tag(),
        line.process,
        line.message
    )
}

/// Octet-counting framing (RFC 6587 3.4.1): `LEN SP MSG`.
pub(crate) fn frame(app: &str, lines: &[Arc<LogLine>]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        let msg = syslog_message(app, line);
        out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    out
}

/// The hub's end of one drain.
pub(crate) struct DrainSender {
    url: String,
    tx: mpsc::Sender<Arc<LogLine>>,
    dropped: Arc<AtomicU64>,
}

impl DrainSender {
    /// Queues a line, or drops and counts it when the drain is behind.
    pub(crate) fn offer(&self, line: &Arc<LogLine>) {
        if self.tx.try_send(line.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Makes the app's running drains match the database: new drains get a task, removed ones
/// lose their sender (their task ends), unchanged ones keep their queue and connection.
pub(crate) fn restart(p: &Platform, app: &str) -> Result<(), PlatformError> {
    let rows = p.state.drains(app)?;
    p.logs.update_drains(app, |running| {
        running.retain(|d| rows.iter().any(|r| r.url == d.url));
        for row in rows {
            if running.iter().any(|d| d.url == row.url) {
                continue;
            }
            // Only URLs that parsed are stored; one that no longer does is skipped, not fatal.
            match Target::parse(&row.url) {
                Ok(target) => running.push(spawn(app, &row.url, target, row.token)),
                Err(e) => tracing::warn!(app, url = %row.url, error = %e, "skipping a drain"),
            }
        }
    });
    Ok(())
}

fn spawn(app: &str, url: &str, target: Target, token: String) -> DrainSender {
    let (tx, rx) = mpsc::channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let drain = Drain {
        app: app.to_owned(),
        url: url.to_owned(),
        target,
        token,
        dropped: dropped.clone(),
        conn: None,
    };
    tokio::spawn(drain.run(rx));
    DrainSender {
        url: url.to_owned(),
        tx,
        dropped,
    }
}

struct Drain {
    app: String,
    url: String,
    target: Target,
    token: String,
    dropped: Arc<AtomicU64>,
    conn: Option<TcpStream>,
}

impl Drain {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<LogLine>>) {
        let mut failures = 0u32;
        while let Some(first) = rx.recv().await {
            // A removed drain stops at once instead of flushing its queue.
            if rx.is_closed() {
                break;
            }
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            let sent = match tokio::time::timeout(SEND_TIMEOUT, self.send(&batch)).await {
                Ok(result) => result,
                Err(_) => Err("timed out".to_owned()),
            };
            match sent {
                Ok(()) => failures = 0,
                Err(error) => {
                    self.conn = None;
                    self.dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    if failures.is_power_of_two() {
                        tracing::warn!(app = %self.app, url = %self.url, %error, dropped = self.dropped.load(Ordering::Relaxed), "log drain unreachable; dropping its lines");
                    }
                    // Lines arriving meanwhile fill the queue and are then dropped and counted.
                    let backoff = Duration::from_millis(250)
                        .saturating_mul(1 << failures.min(8))
                        .min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        tracing::debug!(app = %self.app, url = %self.url, "drain stopped");
    }

    async fn send(&mut self, batch: &[Arc<LogLine>]) -> Result<(), String> {
        let body = frame(&self.app, batch);
        match &self.target {
            Target::Syslog { host, port } => {
                let conn = match &mut self.conn {
                    Some(c) => c,
                    None => {
                        let c = TcpStream::connect((host.as_str(), *port))
                            .await
                            .map_err(|e| e.to_string())?;
                        self.conn.insert(c)
                    }
                };
                conn.write_all(&body).await.map_err(|e| e.to_string())
            }
            Target::Http {
                host,
                port,
                path,
                userinfo,
            } => {
                let mut conn = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| e.to_string())?;
                let host_header = if *port == 80 {
                    host.clone()
                } else {
                    format!("{host}:{port}")
                };
                let mut head = format!(
                    "POST {path} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/logplex-1\r\nContent-Length: {}\r\nLogplex-Msg-Count: {}\r\nLogplex-Drain-Token: {}\r\nUser-Agent: Skiff-Logplex/1\r\nConnection: close\r\n",
                    body.len(),
                    batch.len(),
                    self.token,
                );
                if let Some(u) = userinfo {
                    use base64::Engine as _;
                    let auth = base64::engine::general_purpose::STANDARD.encode(u);
                    head.push_str(&format!("Authorization: Basic {auth}\r\n"));
                }
                head.push_str("\r\n");
                conn.write_all(head.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                conn.write_all(&body).await.map_err(|e| e.to_string())?;
                // Only the status line matters; read a little, never the whole answer.
                let mut buf = [0u8; 64];
                let mut got = 0;
                while got < 12 {
                    let n = conn
                        .read(&mut buf[got..])
                        .await
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let status = String::from_utf8_lossy(&buf[..got]);
                match status.split_whitespace().nth(1) {
                    Some(code) if code.starts_with('2') => Ok(()),
                    Some(code) => Err(format!("the drain answered HTTP {code}")),
                    None => Err("the drain sent no HTTP answer".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_drain_urls() {
        assert_eq!(
            Target::parse("syslog+tcp://logs.example.test:514"),
            Ok(Target::Syslog {
                host: "logs.example.test".into(),
                port: 514
            })
        );
        assert_eq!(
            Target::parse("http://u:p@127.0.0.1:8000/in?x=1"),
            Ok(Target::Http {
                host: "127.0.0.1".into(),
                port: 8000,
                path: "/in?x=1".into(),
                userinfo: Some("u:p".into()),
            })
        );
        assert_eq!(
            Target::parse("http://[::1]"),
            Ok(Target::Http {
                host: "::1".into(),
                port: 80,
                path: "/".into(),
                userinfo: None,
            })
        );
        let https = Target::parse("https://logs.example.test/").expect_err("https refused");
        assert!(https.contains("not supported"), "{https}");
        assert!(Target::parse("syslog+tcp://host").is_err());
        assert!(Target::parse("ftp://host:1").is_err());
        assert!(Target::parse("http://bad host/").is_err());
    }

    #[test]
    fn frames_are_octet_counted_rfc5424() {
        let line = Arc::new(LogLine {
            time_us: 1_795_873_600_000_001,
            source: Source::App,
            process: "web.1".into(),
            message: "héllo".into(),
        });
        let msg = "<14>1 2026-11-28T13:46:40.000001+00:00 myapp app web.1 - - héllo";
        let framed = frame("myapp", &[line.clone(), line]);
        let expected = format!("{} {msg}{} {msg}", msg.len(), msg.len());
        assert_eq!(String::from_utf8(framed).ok(), Some(expected));
    }

    fn app_line(message: &str) -> Arc<LogLine> {
        Arc::new(LogLine {
            time_us: 1_795_873_600_000_000,
            source: Source::App,
            process: "web.1".into(),
            message: message.into(),
        })
    }

    #[tokio::test]
    async fn http_drains_get_logplex_batches() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("http://u:p@127.0.0.1:{port}/logs");
        let target = Target::parse(&url).expect("url");
        let drain = spawn("myapp", &url, target, "d.abc".into());
        drain.offer(&app_line("one"));
        drain.offer(&app_line("two"));

        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let complete = |r: &[u8]| {
            let text = String::from_utf8_lossy(r);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return false;
            };
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            body.len() >= len
        };
        while !complete(&request) {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "drain hung up early");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("answer");
        let text = String::from_utf8_lossy(&request);
        assert!(text.starts_with("POST /logs HTTP/1.1\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: application/logplex-1\r\n"),
            "{text}"
        );
        assert!(text.contains("Logplex-Drain-Token: d.abc\r\n"), "{text}");
        assert!(text.contains("Authorization: Basic dTpw\r\n"), "{text}");
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("Logplex-Msg-Count: "))
            .expect("count");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).expect("body");
        let frames =
            String::from_utf8(frame("myapp", &[app_line("one"), app_line("two")])).expect("utf-8");
        // The first batch may hold one or both lines, depending on when the task woke.
        if count == "2" {
            assert_eq!(body, frames);
        } else {
            assert_eq!(count, "1");
            assert!(frames.starts_with(body), "{body}");
        }
    }

    #[tokio::test]
    async fn a_dead_drain_drops_and_counts_without_blocking() {
        // A port nobody listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let url = format!("syslog+tcp://127.0.0.1:{port}");
        let drain = spawn(
            "myapp",
            &url,
            Target::parse(&url).expect("url"),
            "d.x".into(),
        );
        for i in 0..QUEUE_LINES * 2 {
            drain.offer(&app_line(&format!("{i}")));
        }
        assert!(drain.dropped() >= QUEUE_LINES as u64, "{}", drain.dropped());
    }
}

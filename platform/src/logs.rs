//! Heroku-style logs: every app's output, router lines, build output and platform events go
//! into one [`LogHub`]. Per app it keeps the last [`RING_LINES`] lines (as Logplex does) for
//! `skiff logs`, broadcasts new lines to tails, and hands them to the app's drains.
//!
//! Producers are dyno tasks, the router's Pingora threads and API handlers; none of them may
//! ever wait on a reader, so tails that fall behind lose lines (with a notice) and drains that
//! fall behind drop lines (counted).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json};
use bytes::Bytes;
use futures_util::StreamExt;
use skiff_core::text::log_line_prefix;
use tokio::sync::broadcast;

use crate::api::{ApiError, Caller, authorize};
use crate::drains::{self, DrainSender};
use crate::{Platform, PlatformError};

/// Lines kept per app; `skiff logs -n` can ask for at most this many.
pub(crate) const RING_LINES: usize = 1_500;
/// Lines a tail may fall behind before it starts losing them.
const TAIL_BUFFER: usize = 1_024;
/// Lines `GET /logs` returns without `lines=`.
const DEFAULT_LINES: usize = 100;

/// Who produced a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The app's own stdout/stderr.
    App,
    /// The router, one line per request.
    Router,
    /// Build output.
    Build,
    /// Platform events: releases, dyno state changes.
    Platform,
}

impl Source {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "app" => Some(Self::App),
            "router" => Some(Self::Router),
            "build" => Some(Self::Build),
            "platform" | "skiff" => Some(Self::Platform),
            _ => None,
        }
    }

    /// The name before `[process]`: the app's own lines say `app`, Skiff's say `skiff`.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Router | Self::Build | Self::Platform => "skiff",
        }
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    pub source: Source,
    /// `web.1`, `router`, `build`, `api`, ...
    pub process: String,
    pub message: String,
}

impl std::fmt::Display for LogLine {
    /// `2026-11-28T12:00:00.000000+00:00 app[web.1]: message`, as Heroku prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}[{}]: {}",
            rfc3339_micros(self.time_us),
            self.source.tag(),
            self.process,
            self.message
        )
    }
}

pub(crate) use skiff_core::text::rfc3339_micros;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub source: Option<Source>,
    /// `web.1` matches that dyno; `web` matches every web dyno.
    pub dyno: Option<String>,
}

impl Filter {
    pub(crate) fn matches(&self, line: &LogLine) -> bool {
        if self.source.is_some_and(|s| s != line.source) {
            return false;
        }
        match &self.dyno {
            Some(d) => {
                line.process == *d
                    || line
                        .process
                        .strip_prefix(d.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            }
            None => true,
        }
    }
}

struct AppLog {
    ring: VecDeque<Arc<LogLine>>,
    live: broadcast::Sender<Arc<LogLine>>,
    drains: Vec<DrainSender>,
}

impl AppLog {
    fn new() -> Self {
        Self {
            ring: VecDeque::with_capacity(64),
            live: broadcast::channel(TAIL_BUFFER).0,
            drains: Vec::new(),
        }
    }
}

/// Every app's recent lines, live tails and drains.
pub(crate) struct LogHub {
    apps: Mutex<HashMap<String, AppLog>>,
}

impl LogHub {
    pub(crate) fn new() -> Self {
        Self {
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, AppLog>> {
        // The map stays consistent even if a holder panicked: every change is a single push.
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `message` (one line per `\n`) for `app`. Never blocks on readers.
    pub(crate) fn push(&self, app: &str, source: Source, process: &str, message: &str) {
        let time_us = now_us();
        let mut apps = self.lock();
        let log = apps.entry(app.to_owned()).or_insert_with(AppLog::new);
        for text in message.lines() {
            let line = Arc::new(LogLine {
                time_us,
                source,
                process: process.to_owned(),
                message: log_line_prefix(text.trim_end_matches('\r')).to_owned(),
            });
            if log.ring.len() >= RING_LINES {
                log.ring.pop_front();
            }
            log.ring.push_back(line.clone());
            // No tail listening is not an error.
            let _ = log.live.send(line.clone());
            for drain in &log.drains {
                drain.offer(&line);
            }
        }
    }

    /// The last `n` lines matching `filter`, oldest first.
    #[cfg(test)]
    pub(crate) fn recent(&self, app: &str, filter: &Filter, n: usize) -> Vec<Arc<LogLine>> {
        self.recent_and_subscribe(app, filter, n).0
    }

    /// The last `n` matching lines and a receiver of every later line, taken together so a
    /// tail neither misses nor repeats a line.
    pub(crate) fn recent_and_subscribe(
        &self,
        app: &str,
        filter: &Filter,
        n: usize,
    ) -> (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>) {
        let mut apps = self.lock();
        let log = apps.entry(app.to_owned()).or_insert_with(AppLog::new);
        let mut lines: Vec<_> = log
            .ring
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(n)
            .cloned()
            .collect();
        lines.reverse();
        (lines, log.live.subscribe())
    }

    /// Changes the app's drains under the hub's lock, so no line is offered to a half-updated
    /// set. A sender dropped here ends its delivery task.
    pub(crate) fn update_drains(&self, app: &str, change: impl FnOnce(&mut Vec<DrainSender>)) {
        let mut apps = self.lock();
        change(
            &mut apps
                .entry(app.to_owned())
                .or_insert_with(AppLog::new)
                .drains,
        );
    }

    /// Forgets an app's lines and stops its drains (destroy, rename).
    pub(crate) fn forget(&self, app: &str) {
        self.lock().remove(app);
    }

    /// Lines each of the app's drains dropped, by URL.
    pub(crate) fn drain_drops(&self, app: &str) -> HashMap<String, u64> {
        self.lock()
            .get(app)
            .map(|log| {
                log.drains
                    .iter()
                    .map(|d| (d.url().to_owned(), d.dropped()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl skiff_runtime::LogSink for LogHub {
    fn line(&self, app: &str, dyno: &str, text: &str) {
        self.push(app, Source::App, dyno, text);
    }

    fn state(&self, app: &str, dyno: &str, text: &str) {
        self.push(app, Source::Platform, dyno, text);
    }
}

impl skiff_router::AccessLog for LogHub {
    fn request(&self, app: &str, line: &str) {
        self.push(app, Source::Router, "router", line);
    }
}

/// The platform's log hub, created before the platform runs so the router (which starts
/// before any tokio runtime) can write to it. Hand it to [`crate::run`].
#[derive(Clone)]
pub struct Logs(pub(crate) Arc<LogHub>);

impl Logs {
    /// An empty hub.
    pub fn new() -> Self {
        Self(Arc::new(LogHub::new()))
    }

    /// The router's side of the hub, for `RouterConfig::access_log`.
    pub fn access_log(&self) -> Arc<dyn skiff_router::AccessLog> {
        self.0.clone()
    }
}

impl Default for Logs {
    fn default() -> Self {
        Self::new()
    }
}

type Shared = Arc<Platform>;

/// The log and drain routes; `api::router` merges them under its token check.
pub(crate) fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/apps/{app}/logs", get(get_logs))
        .route(
            "/apps/{app}/drains",
            get(list_drains).post(add_drain).delete(remove_drain),
        )
}

#[derive(serde::Deserialize)]
struct LogQuery {
    lines: Option<usize>,
    source: Option<String>,
    dyno: Option<String>,
    #[serde(default)]
    tail: bool,
}

/// Recent lines as text; with `tail=true`, then every new line until the client leaves or
/// the platform stops.
async fn get_logs(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    authorize(&p, &caller, &app)?;
    let source = match q.source.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Source::parse(s).ok_or_else(|| {
            PlatformError::BadRequest(format!(
                "unknown log source {s:?}; use app, router, build or platform"
            ))
        })?),
    };
    let filter = Filter {
        source,
        dyno: q.dyno.filter(|d| !d.is_empty()),
    };
    let n = q.lines.unwrap_or(DEFAULT_LINES).min(RING_LINES);
    let (lines, rx) = p.logs.recent_and_subscribe(&app, &filter, n);
    let mut text = String::new();
    for line in &lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    let body = if q.tail {
        let first = futures_util::stream::once(async move {
            Ok::<_, std::convert::Infallible>(Bytes::from(text))
        });
        let shutdown = p.shutdown.clone();
        let rest = futures_util::stream::unfold((rx, shutdown, filter), next_tail_chunk);
        Body::from_stream(first.chain(rest))
    } else {
        drop(rx);
        Body::from(text)
    };
    builder
        .header("x-accel-buffering", "no")
        .body(body)
        .map_err(|e| PlatformError::Io(std::io::Error::other(e)).into())
}

type TailState = (
    broadcast::Receiver<Arc<LogLine>>,
    tokio::sync::watch::Receiver<bool>,
    Filter,
);

async fn next_tail_chunk(
    (mut rx, mut shutdown, filter): TailState,
) -> Option<(Result<Bytes, std::convert::Infallible>, TailState)> {
    loop {
        let received = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return None,
            r = rx.recv() => r,
        };
        let text = match received {
            Ok(line) if filter.matches(&line) => format!("{line}\n"),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let notice = LogLine {
                    time_us: now_us(),
                    source: Source::Platform,
                    process: "logs".into(),
                    message: format!(
                        "Error L10 (output buffer overflow): this tail fell behind and lost {n} lines"
                    ),
                };
                format!("{notice}\n")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        return Some((Ok(Bytes::from(text)), (rx, shutdown, filter)));
    }
}

#[derive(serde::Serialize)]
struct DrainInfo {
    id: i64,
    url: String,
    token: String,
    dropped: u64,
}

async fn list_drains(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Vec<DrainInfo>>, ApiError> {
    authorize(&p, &caller, &app)?;
    let drops = p.logs.drain_drops(&app);
    let drains = p
        .state
        .drains(&app)?
        .into_iter()
        .map(|d| DrainInfo {
            dropped: drops.get(&d.url).copied().unwrap_or(0),
            id: d.id,
            url: d.url,
            token: d.token,
        })
        .collect();
    Ok(Json(drains))
}

#[derive(serde::Deserialize)]
struct DrainBody {
    url: String,
}

async fn add_drain(
    State(p): State<Shared>,
    Path(app): Path<String>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<DrainBody>,
) -> Result<(StatusCode, Json<DrainInfo>), ApiError> {
    authorize(&p, &caller, &app)?;
    let url = body.url.trim();
    drains::Target::parse(url).map_err(PlatformError::BadRequest)?;
    let token = drains::new_token().map_err(PlatformError::Io)?;
    let row = p
        .state
        .add_drain(&app, url, &token)?
        .ok_or_else(|| PlatformError::BadRequest(format!("{url} is already a drain of {app}")))?;
    drains::restart(&p, &app)?;
    tracing::info!(app, url, by = caller.0, "drain added");
    Ok((
        StatusCode::CREATED,
        Json(DrainInfo {
            id: row.id,
            url: row.url,
            token: row.token,
            dropped: 0,
        }),
    ))
}

#[derive(serde::Deserialize)]
struct DrainQuery {
    url: String,
}

async fn remove_drain(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<DrainQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&p, &caller, &app)?;
    let url = q.url.trim();
    if !p.state.remove_drain(&app, url)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{url} is not a drain of {app}"),
        ));
    }
    drains::restart(&p, &app)?;
    tracing::info!(app, url, "drain removed");
    Ok(Json(serde_json::json!({ "url": url })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: Source, process: &str, message: &str) -> LogLine {
        LogLine {
            time_us: 1_795_873_600_123_456,
            source,
            process: process.into(),
            message: message.into(),
        }
    }

    #[test]
    fn prints_heroku_lines() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            line(Source::App, "web.1", "GET /").to_string(),
            "2026-11-28T13:46:40.123456+00:00 app[web.1]: GET /"
        );
        assert_eq!(
            line(Source::Router, "router", "at=info").to_string(),
            "2026-11-28T13:46:40.123456+00:00 skiff[router]: at=info"
        );
        assert_eq!(
            line(Source::Build, "build", "-----> Rust app detected").to_string(),
            "2026-11-28T13:46:40.123456+00:00 skiff[build]: -----> Rust app detected"
        );
        assert_eq!(
            line(Source::Platform, "api", "Release v1 created by admin").to_string(),
            "2026-11-28T13:46:40.123456+00:00 skiff[api]: Release v1 created by admin"
        );
    }

    #[test]
    fn ring_keeps_the_newest_lines_only() {
        let hub = LogHub::new();
        for i in 0..RING_LINES + 500 {
            hub.push("a", Source::App, "web.1", &format!("line {i}"));
        }
        let all = hub.recent("a", &Filter::default(), usize::MAX);
        assert_eq!(all.len(), RING_LINES);
        assert_eq!(all[0].message, "line 500");
        assert_eq!(
            all[RING_LINES - 1].message,
            format!("line {}", RING_LINES + 499)
        );
        let last = hub.recent("a", &Filter::default(), 2);
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].message, format!("line {}", RING_LINES + 499));
        assert!(hub.recent("other", &Filter::default(), 10).is_empty());
    }

    #[test]
    fn filters_by_source_and_dyno() {
        let hub = LogHub::new();
        hub.push("a", Source::App, "web.1", "one\ntwo");
        hub.push("a", Source::App, "web.2", "three");
        hub.push("a", Source::App, "webhook.1", "four");
        hub.push("a", Source::Router, "router", "at=info");
        hub.push("a", Source::Build, "build", "-----> built");
        let messages = |f: Filter| -> Vec<String> {
            hub.recent("a", &f, 100)
                .iter()
                .map(|l| l.message.clone())
                .collect()
        };
        assert_eq!(
            messages(Filter {
                source: Some(Source::Router),
                dyno: None
            }),
            ["at=info"]
        );
        assert_eq!(
            messages(Filter {
                source: None,
                dyno: Some("web.1".into())
            }),
            ["one", "two"]
        );
        assert_eq!(
            messages(Filter {
                source: Some(Source::App),
                dyno: Some("web".into())
            }),
            ["one", "two", "three"]
        );
        assert_eq!(
            messages(Filter {
                source: Some(Source::Build),
                dyno: None
            }),
            ["-----> built"]
        );
        assert_eq!(Source::parse("nope"), None);
    }

    #[test]
    fn slow_tails_lose_lines_without_blocking() {
        let hub = LogHub::new();
        let (old, mut rx) = hub.recent_and_subscribe("a", &Filter::default(), 10);
        assert!(old.is_empty());
        for i in 0..TAIL_BUFFER * 3 {
            hub.push("a", Source::App, "web.1", &format!("{i}"));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        // After the notice the tail goes on with what is still buffered.
        assert!(rx.try_recv().is_ok());
    }
}

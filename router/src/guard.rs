//! Bounds that Pingora's listener and HTTP/1 reader leave to the application: a total deadline
//! for each request head and each TLS handshake, and a cap on open client connections.
//!
//! Pingora bounds each read of a head (60 s of silence), not the head as a whole, so a client
//! that sends one byte a minute holds its connection forever (slow loris). It accepts every
//! connection the kernel hands it, so enough idle clients take all the process's file
//! descriptors, which the API, git and the dynos share. And its TLS listener gives every
//! handshake 60 s before the application sees the connection, so the router does the
//! handshake itself, once the connection has its place under the caps.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use crate::pages::page;
use crate::table::AppSettings;

/// A router line at `level` through `gate` (once a second at most), at debug otherwise: lines
/// a client can cause by the thousand must not flood the log, yet each stays findable.
macro_rules! each_second {
    ($gate:expr, $level:expr, $($field:tt)+) => {
        if $gate.due() {
            tracing::event!(target: "skiff::router", $level, $($field)+);
        } else {
            tracing::debug!(target: "skiff::router", $($field)+);
        }
    };
}
pub(crate) use each_second;

/// Pingora's proxy app behind the connection caps, with each connection's TLS handshake done
/// here and each connection watched by a [`ClientWatch`].
pub(crate) struct Guarded<A> {
    app: Arc<A>,
    head_timeout: Duration,
    max_connections: Option<usize>,
    open: Arc<AtomicUsize>,
    /// Set once the listeners have closed (after a drain began): from then on, a count of no
    /// open connections stays so.
    closed: Arc<AtomicBool>,
    per_client: Option<Arc<PerClient>>,
    /// One refusal line a second at most, so a flood of connections does not become a flood
    /// of log lines.
    refusal_log: EverySecond,
    /// The HTTPS listener, whose connections arrive as plain TCP.
    tls: Option<TlsPort>,
}

impl<A> Guarded<A> {
    /// `open` counts the connections open at any moment; `closed` is set when the listeners
    /// close.
    pub(crate) fn new(
        app: A,
        limits: ConnectionLimits,
        open: Arc<AtomicUsize>,
        closed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            app: Arc::new(app),
            head_timeout: limits.head_timeout,
            max_connections: limits.max_connections,
            open,
            closed,
            per_client: limits.max_per_client.map(|max| {
                Arc::new(PerClient {
                    max,
                    open: Mutex::new(HashMap::new()),
                })
            }),
            refusal_log: EverySecond::new(),
            tls: None,
        }
    }

    /// Connections to `tls.addr` get a TLS handshake, bounded by the head timeout.
    pub(crate) fn with_tls(mut self, tls: TlsPort) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The connection's place, or why it has none, with what it holds while it is told so.
    fn admit(&self, stream: &Stream) -> Result<Admitted, (Refusal, Option<Held>)> {
        // The client's own cap first: its refusals are held apart from the router's places,
        // so one client's flood of them cannot fill the router's cap.
        let client = match (&self.per_client, client_key(stream)) {
            (Some(per_client), Some(key)) => match per_client.admit(key) {
                Ok(client) => Some(client),
                Err(Some(refusing)) => {
                    return Err((Refusal::Client(key), Some(Held::Client(refusing))));
                }
                Err(None) => return Err((Refusal::Flood, None)),
            },
            _ => None,
        };
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let held = OpenConnection(self.open.clone());
        if let Some(max) = self.max_connections
            && open > max
        {
            // Refusals hold descriptors too: a flood past the cap's slack is closed unanswered.
            if open > max + REFUSAL_SLACK {
                return Err((Refusal::Flood, None));
            }
            return Err((Refusal::Router, Some(Held::Router(held))));
        }
        Ok(Admitted {
            _open: held,
            _client: client,
        })
    }

    async fn refuse(&self, stream: Stream, why: Refusal, tls: Option<&TlsPort>) {
        if self.refusal_log.due() {
            match why {
                Refusal::Router => tracing::warn!(
                    target: "skiff::router",
                    max = self.max_connections.unwrap_or_default(),
                    "router at its cap of open connections: refusing new ones with 503"
                ),
                Refusal::Flood => tracing::warn!(
                    target: "skiff::router",
                    "connections far past a cap (the router's or one address's): closing new ones unanswered"
                ),
                Refusal::Client(client) => tracing::warn!(
                    target: "skiff::router",
                    %client,
                    max = self.per_client.as_ref().map(|p| p.max).unwrap_or_default(),
                    "a client address at its cap of open connections: refusing its new ones with 503"
                ),
            }
        }
        if matches!(why, Refusal::Flood) {
            return;
        }
        let body = match why {
            Refusal::Router | Refusal::Flood => page(
                "Too many connections",
                "Skiff's router is at its limit of open connections. Try again in a moment.",
            ),
            Refusal::Client(_) => page(
                "Too many connections",
                "Your address has as many connections open to Skiff's router as it allows. Close some, or try again in a moment.",
            ),
        };
        // No request was read, but the page carries an id like every other the router writes.
        let id = crate::proxy::new_request_id();
        let answer = raw_page(
            "503 Service Unavailable",
            &body,
            &format!("retry-after: 1\r\nx-request-id: {id}\r\n"),
        );
        // The client may be sending its request meanwhile: closing with it unread would reset
        // the connection and could lose the answer, so what comes before the client's close
        // (or a short wait) is read and dropped. An HTTPS client is told over TLS, the
        // handshake within the same wait: the refusals at once are few (`REFUSAL_SLACK`).
        let _ = tokio::time::timeout(REFUSAL_GRACE, async {
            let mut stream = match tls {
                Some(tls) => tls.handshake(stream).await.map_err(io::Error::other)?,
                None => stream,
            };
            // An HTTP/2 client would not read an HTTP/1 answer: it is told in HTTP/2's terms,
            // a GOAWAY that processed no stream (so it may retry elsewhere or later).
            let answer = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                h2_refusal(why)
            } else {
                answer.into_bytes()
            };
            stream.write_all(&answer).await?;
            stream.flush().await?;
            Shutdown::shutdown(&mut *stream).await;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    }
}

/// The server's half of an HTTP/2 connection preface (an empty SETTINGS frame), then a
/// GOAWAY naming no stream as processed, with the reason as its debug data: NO_ERROR when the
/// router is full, ENHANCE_YOUR_CALM when this client's address is (RFC 9113 sections 6.8, 7).
fn h2_refusal(why: Refusal) -> Vec<u8> {
    let (code, reason): (u32, &[u8]) = match why {
        Refusal::Client(_) => (0xb, b"too many connections from this address"),
        Refusal::Router | Refusal::Flood => (0x0, b"the router is at its connection limit"),
    };
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + reason.len()) as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&code.to_be_bytes());
    frames.extend_from_slice(reason);
    frames
}

/// How long a refused connection is given to take its 503.
const REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// How many connections past a cap (the router's, or one address's) are answered with a 503
/// at once rather than closed.
const REFUSAL_SLACK: usize = 64;

/// The bounds on client connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) head_timeout: Duration,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_per_client: Option<usize>,
}

/// Why a connection is turned away.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The router is at its cap.
    Router,
    /// Far past a cap: closed without a word.
    Flood,
    /// The client's address is at its cap.
    Client(IpAddr),
}

/// What a refused connection holds while it is told so.
enum Held {
    Router(#[allow(dead_code, reason = "held for its Drop")] OpenConnection),
    Client(#[allow(dead_code, reason = "held for its Drop")] ClientConnection),
}

/// What an admitted connection holds until it closes.
struct Admitted {
    _open: OpenConnection,
    _client: Option<ClientConnection>,
}

/// Open connections per client address.
struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, Counts>>,
}

/// One client address's connections: admitted, and being told they are not.
#[derive(Default)]
struct Counts {
    open: usize,
    refusing: usize,
}

/// Which count a [`ClientConnection`] holds a place in.
#[derive(Clone, Copy)]
enum Place {
    Open,
    Refusing,
}

impl PerClient {
    /// A place among the address's open connections; else, while few of its refusals are
    /// pending, one among those (`Err(Some)`: answer it); else nothing (`Err(None)`: close it).
    fn admit(self: &Arc<Self>, key: IpAddr) -> Result<ClientConnection, Option<ClientConnection>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let counts = open.entry(key).or_default();
        let place = if counts.open < self.max {
            counts.open += 1;
            Place::Open
        } else if counts.refusing < REFUSAL_SLACK {
            counts.refusing += 1;
            Place::Refusing
        } else {
            return Err(None);
        };
        let held = ClientConnection {
            table: self.clone(),
            key,
            place,
        };
        match place {
            Place::Open => Ok(held),
            Place::Refusing => Err(Some(held)),
        }
    }
}

/// One connection of a client address; uncounted when dropped.
struct ClientConnection {
    table: Arc<PerClient>,
    key: IpAddr,
    place: Place,
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = open.get_mut(&self.key) {
            match self.place {
                Place::Open => counts.open = counts.open.saturating_sub(1),
                Place::Refusing => counts.refusing = counts.refusing.saturating_sub(1),
            }
            if counts.open == 0 && counts.refusing == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Who a connection counts against: its peer's address, or for IPv6 the /64 it is in, which is
/// what one subscriber is handed (one address each would let a single host open a cap's worth
/// from every one of its addresses).
fn client_key(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let ip = digest.peer_addr()?.as_inet()?.ip().to_canonical();
    Some(match ip {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        v4 => v4,
    })
}

/// One admitted connection; uncounted when dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tls = self.tls.as_ref().filter(|tls| tls.serves(&stream));
        let _admitted = match self.admit(&stream) {
            Ok(admitted) => admitted,
            Err((why, _held)) => {
                self.refuse(stream, why, tls).await;
                return None;
            }
        };
        let stream = match tls {
            Some(tls) => {
                let client = client_key(&stream);
                match tokio::time::timeout(self.head_timeout, tls.handshake(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        each_second!(HANDSHAKE_LOG, tracing::Level::INFO, client = ?client, error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        each_second!(
                            HANDSHAKE_LOG,
                            tracing::Level::INFO,
                            client = ?client,
                            limit = ?self.head_timeout,
                            "TLS handshake not done within the head timeout: connection closed"
                        );
                        return None;
                    }
                }
            }
            None => stream,
        };
        // HTTP/2 frames its own heads and the h2 crate bounds them, but not the client's
        // preface, which it awaits for good.
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            Box::new(ClientWatch::http2(stream, self.head_timeout))
        } else {
            Box::new(ClientWatch::new(stream, self.head_timeout))
        };
        self.app.process_new(stream, shutdown).await
    }

    /// Runs once the listeners have closed.
    async fn cleanup(&self) {
        self.closed.store(true, Ordering::Release);
        self.app.cleanup().await;
    }
}

/// The cut-off heads' log line, one a second at most across all connections.
static EXPIRY_LOG: EverySecond = EverySecond::new();

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which opens every HTTP/2 connection (RFC 9113 section 3.4).
const H2_PREFACE_LEN: usize = 24;

/// Failed and cut-off TLS handshakes' log line, likewise: anyone can send a bad handshake.
static HANDSHAKE_LOG: EverySecond = EverySecond::new();

/// The HTTPS listener's address and the acceptor for its handshakes.
pub(crate) struct TlsPort {
    pub(crate) addr: SocketAddr,
    pub(crate) acceptor: Acceptor,
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("not a TCP connection")]
    NotTcp,
    #[error(transparent)]
    Tls(#[from] Box<pingora_error::Error>),
}

impl TlsPort {
    /// Whether the connection came in on the HTTPS listener.
    fn serves(&self, stream: &Stream) -> bool {
        let Some(digest) = stream.get_socket_digest() else {
            return false;
        };
        // A listener on every address sees the one the client reached.
        digest
            .local_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|local| {
                local.port() == self.addr.port()
                    && (self.addr.ip().is_unspecified() || local.ip() == self.addr.ip())
            })
    }

    async fn handshake(&self, stream: Stream) -> Result<Stream, HandshakeError> {
        let tcp = stream
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| HandshakeError::NotTcp)?;
        Ok(Box::new(self.acceptor.tls_handshake(*tcp).await?))
    }
}

/// Lets a log line through at most once a second.
pub(crate) struct EverySecond(AtomicU64);

impl EverySecond {
    pub(crate) const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Whether this second's line is still to be written (and from now on, it is not).
    pub(crate) fn due(&self) -> bool {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.0.swap(second, Ordering::Relaxed) != second
    }
}

/// A whole HTTP/1.1 answer with one of the router's pages, for a connection the proxy never
/// reaches (refused, or cut off before its head was read); it closes the connection.
fn raw_page(status: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-cache, no-store\r\n{extra_headers}via: 1.1 skiff\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A client's stream, watched for what Pingora leaves unbounded or answers by itself: each
/// HTTP/1 request head (an HTTP/2 connection's preface) must arrive within a time limit; a
/// write that waits on a client reading nothing fails at the client timeout
/// ([`ClientWatch::watch_write`]); and Pingora's bare HTTP/1 answers to heads no router hook
/// sees become the router's page ([`ClientWatch::pingora_answering`]).
///
/// The head limit runs from a head's first byte, so time a kept-alive connection spends idle counts
/// against the idle limit, not this one; the first head's runs from the connection's start, so
/// a client that connects and sends nothing is let go at the same limit (silently: browsers
/// open connections ahead of need). The router says when it has a head
/// ([`ClientWatch::head_read`]) and when the request is over ([`ClientWatch::request_done`]); the
/// reads between are bodies, which the router bounds per read instead.
pub(crate) struct ClientWatch {
    inner: Stream,
    limit: Duration,
    in_request: AtomicBool,
    /// A request ended since the last read: what comes next is a new head.
    new_head: AtomicBool,
    /// Bytes of the current head have arrived.
    head_started: bool,
    /// Armed when a head has to wait for more bytes (a connection's first head: from the
    /// start), so a later head that arrives whole costs no timer.
    deadline: Option<Pin<Box<Sleep>>>,
    started_at: Option<Instant>,
    expired: bool,
    /// The router's page written in place of Pingora's own answer to a head the router never
    /// saw, and how much of it is out.
    own_answer: Option<(Vec<u8>, usize)>,
    /// How long a write to the client may go without progress (the app's client timeout).
    write_limit_ms: AtomicU64,
    /// Armed while a write waits on a client that is not reading.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// On an HTTP/2 connection, bytes of the client's preface still to come: it runs against
    /// the head limit, and then the connection is the h2 library's (and the idle limit's).
    preface_left: usize,
}

impl ClientWatch {
    fn new(inner: Stream, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            in_request: AtomicBool::new(false),
            new_head: AtomicBool::new(false),
            head_started: false,
            deadline: None,
            started_at: Some(Instant::now()),
            expired: false,
            own_answer: None,
            // Until the router knows the app, whose own client timeout then applies.
            write_limit_ms: AtomicU64::new(AppSettings::default().client_timeout.as_millis() as u64),
            write_stall: None,
            preface_left: 0,
        }
    }

    /// The watch on an HTTP/2 connection: only the write bound, and the head limit for the
    /// client's connection preface.
    fn http2(inner: Stream, limit: Duration) -> Self {
        Self {
            preface_left: H2_PREFACE_LEN,
            ..Self::new(inner, limit)
        }
    }

    /// The watch on `stream`, if it has one (a connection's does; an HTTP/2 stream's is the
    /// connection's, which no request reaches).
    pub(crate) fn of(stream: &Stream) -> Option<&ClientWatch> {
        (**stream).as_any().downcast_ref::<ClientWatch>()
    }

    /// Writes to this client may wait on it this long without progress before they fail.
    pub(crate) fn set_write_limit(&self, limit: Duration) {
        self.write_limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// The router has parsed a request's head: reads are its body until the request is done.
    pub(crate) fn head_read(&self) {
        self.in_request.store(true, Ordering::Relaxed);
    }

    /// The request is over: the next bytes begin another head.
    pub(crate) fn request_done(&self) {
        self.new_head.store(true, Ordering::Relaxed);
        self.in_request.store(false, Ordering::Relaxed);
    }

    /// Tells a client that took too long why it is cut off. One attempt, never a wait: the
    /// client may not be reading either.
    fn tell_expired(&mut self, cx: &mut Context<'_>) {
        let secs = self.limit.as_secs_f64();
        let body = page(
            "Request timeout",
            &format!("The request's head did not arrive within {secs} s."),
        );
        let id = crate::proxy::new_request_id();
        let answer = raw_page(
            "408 Request Timeout",
            &body,
            &format!("x-request-id: {id}\r\n"),
        );
        let _ = Pin::new(&mut self.inner).poll_write(cx, answer.as_bytes());
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        // At info one line a second at most: a slow-loris flood must not become a log flood.
        // The rest go to debug, each with the request id its client was shown. (Pingora logs
        // an ERROR line for each, which `skiff up`'s log filter drops as the client's.)
        let peer = self
            .inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        each_second!(
            EXPIRY_LOG,
            tracing::Level::INFO,
            peer = ?peer,
            limit_s = secs,
            request_id = %id,
            "request head not complete in time: closed with 408"
        );
    }
}

impl fmt::Debug for ClientWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientWatch")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .field("in_request", &self.in_request)
            .field("head_started", &self.head_started)
            .finish()
    }
}

impl AsyncRead for ClientWatch {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.in_request.load(Ordering::Relaxed) {
            if this.started_at.take().is_some() {
                // Its timer would wake the task once for nothing.
                this.deadline = None;
            }
            this.head_started = false;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.expired {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        if this.new_head.load(Ordering::Relaxed) {
            // The last request may have read nothing after its head (a GET): its head's
            // start must not count for the next one, nor the idle time between.
            this.new_head.store(false, Ordering::Relaxed);
            this.head_started = false;
            if this.started_at.take().is_some() {
                this.deadline = None;
            }
        }
        if this.started_at.is_some() && this.poll_expired(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.preface_left > 0 {
            // Never a head: an HTTP/2 client cut off is not sent an HTTP/1 408.
            if let Poll::Ready(Ok(())) = read {
                let got = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(got);
                if this.preface_left == 0 {
                    this.head_read();
                }
            }
            return read;
        }
        match &read {
            // Empty lines before a request line are to be ignored (RFC 9112 section 2.2): they
            // begin no head, so a client's stray CRLF between requests starts no clock.
            Poll::Ready(Ok(())) if !this.head_started => {
                this.head_started = buf.filled()[before..]
                    .iter()
                    .any(|b| !matches!(b, b'\r' | b'\n'));
            }
            Poll::Pending if this.head_started && this.started_at.is_none() => {
                // A head that has to wait for more bytes: from here it runs against the clock,
                // counted from about its first byte (the parse between is microseconds).
                this.started_at = Some(Instant::now());
                if this.poll_expired(cx) {
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
            }
            _ => {}
        }
        read
    }
}

impl ClientWatch {
    /// Whether the current head's time is up; if not, the task wakes when it is.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(started) = self.started_at else {
            return false;
        };
        let at = tokio::time::Instant::from_std(started + self.limit);
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if deadline.deadline() != at {
            deadline.as_mut().reset(at);
        }
        if deadline.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.expired = true;
        if self.head_started {
            self.tell_expired(cx);
        }
        true
    }
}

/// The info line for heads answered without reaching the router, one a second at most: each
/// costs the client only a connection, so a flood of them must not become a log flood. The
/// rest go to the debug level, each with the request id its client was shown.
static OWN_ANSWER_LOG: EverySecond = EverySecond::new();

impl ClientWatch {
    /// Whether `buf` begins an answer Pingora writes by itself: a response head written while
    /// the router holds no request, which happens only when Pingora could not parse a head
    /// (400). Its answer would carry `Server: Pingora` and no page; the router's own takes its
    /// place. The only other writes outside a request are a finished request's last chunk,
    /// which is no response head. (Pingora passes CONNECT on to the router, which answers it;
    /// the 405 arm stays for a Pingora that refuses it again.)
    fn pingora_answering(&mut self, buf: &[u8]) -> bool {
        if self.own_answer.is_some() {
            return true;
        }
        if self.in_request.load(Ordering::Relaxed) || !buf.starts_with(b"HTTP/1.") {
            return false;
        }
        // The code follows `HTTP/1.x `.
        let status = buf
            .get(9..12)
            .and_then(|code| http::StatusCode::from_bytes(code).ok())
            .unwrap_or(http::StatusCode::BAD_REQUEST);
        let reason = status.canonical_reason().unwrap_or("Bad Request");
        let (title, why) = match status.as_u16() {
            405 => ("Method not allowed", "This method is not supported here."),
            // Pingora also refuses here heads it could parse but not frame safely (two
            // lengths, an unknown transfer coding).
            400 => (
                "Bad request",
                "The request's head is not valid HTTP/1.1, or its body's length is ambiguous.",
            ),
            _ => (reason, "The request could not be served."),
        };
        let id = crate::proxy::new_request_id();
        let answer = raw_page(
            &format!("{} {reason}", status.as_str()),
            &page(title, why),
            &format!("x-request-id: {id}\r\n"),
        );
        self.own_answer = Some((answer.into_bytes(), 0));
        let peer = self
            .inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let status = status.as_u16();
        each_second!(
            OWN_ANSWER_LOG,
            tracing::Level::INFO,
            peer = ?peer,
            status,
            request_id = %id,
            "request head not understood: answered with the router's page"
        );
        true
    }

    /// Writes the router's page, then reports Pingora's `len` bytes as written: they never go
    /// out.
    fn poll_own_answer(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let Some((answer, written)) = self.own_answer.as_mut() else {
            return Poll::Ready(Ok(len));
        };
        while *written < answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(len))
    }
}

impl AsyncWrite for ClientWatch {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = if this.pingora_answering(buf) {
            this.poll_own_answer(cx, buf.len())
        } else {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        };
        this.watch_write(cx, polled, |n| *n > 0)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch_write(cx, polled, |_| true)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch_write(cx, polled, |_| true)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let polled = if this.pingora_answering(first) {
            let len = bufs.iter().map(|b| b.len()).sum();
            this.poll_own_answer(cx, len)
        } else {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        };
        this.watch_write(cx, polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl ClientWatch {
    /// Fails a write that has waited on the client longer than the write limit. Pingora bounds
    /// body writes itself, but not a response head's write or the flushes, so a client that
    /// sends requests and never reads the answers would otherwise hold its connection, and its
    /// place in the app's bound on requests in flight, for good.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        progressed: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => {
                let limit = Duration::from_millis(self.write_limit_ms.load(Ordering::Relaxed));
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stall.as_mut().poll(cx).is_ready() {
                    self.write_stall = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing within its timeout",
                    )));
                }
            }
            Poll::Ready(Ok(value)) if progressed(value) => self.write_stall = None,
            Poll::Ready(_) => {}
        }
        polled
    }
}

#[async_trait]
impl Shutdown for ClientWatch {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for ClientWatch {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientWatch {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientWatch {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientWatch {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ClientWatch {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for ClientWatch {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback pair: the client's socket, and the server's side as Pingora's stream.
    async fn pair() -> (tokio::net::TcpStream, Stream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, Box::new(L4Stream::from(server)))
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn http2_preface_runs_against_the_head_limit_then_reads_pass_through() {
        let limit = Duration::from_millis(300);

        // Nothing sent: the read fails at the limit, and no HTTP/1 408 goes out.
        let (mut client, server) = pair().await;
        let mut watch = ClientWatch::http2(server, limit);
        let mut buf = [0u8; 64];
        let err = watch.read(&mut buf).await.expect_err("cut off");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(watch);
        let mut sent = Vec::new();
        let _ = client.read_to_end(&mut sent).await;
        assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));

        // The preface in pieces within the limit, then silence past it, then more bytes:
        // once the preface is in, the watch no longer times reads.
        let (mut client, server) = pair().await;
        let mut watch = ClientWatch::http2(server, limit);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < PREFACE.len() + 4 {
                let n = watch.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok::<_, io::Error>(got)
        });
        for piece in PREFACE.chunks(10) {
            client.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(limit * 2).await;
        client.write_all(b"more").await.expect("write");
        let got = reader.await.expect("join").expect("reads pass through");
        assert_eq!(got, [PREFACE, b"more"].concat());

        // The preface and a frame in one read count as the preface done.
        let (mut client, server) = pair().await;
        let mut watch = ClientWatch::http2(server, limit);
        client
            .write_all(&[PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat())
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < PREFACE.len() + 9 {
            let got = watch.read(&mut buf[n..]).await.expect("read");
            assert!(got > 0, "closed after {n} bytes");
            n += got;
        }
        tokio::time::sleep(limit * 2).await;
        client.write_all(b"x").await.expect("write");
        assert_eq!(watch.read(&mut buf).await.expect("read past the limit"), 1);
    }
}

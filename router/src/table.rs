//! The route table: host -> app -> web dynos, plus each app's router settings. Readers take a
//! snapshot without locking (`ArcSwap`); writers replace one app's entry at a time.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::tls::CertStore;

/// One web dyno the router may send requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The dyno's name (`web.1`), for logs.
    pub dyno: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// How the router treats one app's requests. The platform derives it from the app's state
/// (maintenance, features) and config vars, and sets it with [`RouteTable::set_settings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// Answer every request with the maintenance page (H80).
    pub maintenance: bool,
    /// Pin each client to one dyno with a cookie.
    pub session_affinity: bool,
    /// How long a dyno may take to start its response (H12).
    pub timeout: Duration,
    /// Requests in flight per web dyno before new ones are refused (H11).
    pub max_concurrency: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: u64,
    /// How long the router waits on a silent client while it sends its request.
    pub client_timeout: Duration,
    /// How long a request waits for web dynos that are starting before H20.
    pub boot_timeout: Duration,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            maintenance: false,
            session_affinity: false,
            timeout: Duration::from_secs(30),
            max_concurrency: 50,
            max_body_bytes: 100 << 20,
            client_timeout: Duration::from_secs(30),
            // Heroku's router queues requests this long for starting dynos.
            boot_timeout: Duration::from_secs(75),
        }
    }
}

/// A backend as the router uses it: its load and its affinity id.
#[derive(Debug)]
pub(crate) struct Slot {
    pub backend: Backend,
    /// Opaque, stable while the dyno lives; the affinity cookie carries it.
    pub id: String,
    /// Unique to this dyno's time in the table. Pooled upstream connections are keyed by it,
    /// so a later dyno that gets a stopped dyno's port never inherits that dyno's connections
    /// (which its runtime keeps serving with the old release).
    pub generation: u64,
    inflight: Arc<AtomicUsize>,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    pub(crate) fn track(&self) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.inflight.clone())
    }

    fn load(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// The bytes an app's requests and responses may move through the router, shared by all
/// its connections: a token bucket holding a second's worth, in debt while over.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    /// Bytes the app may still send now (negative: owed), and when that was last worked out.
    balance: Mutex<(f64, Instant)>,
}

impl Default for Bandwidth {
    fn default() -> Self {
        Self {
            balance: Mutex::new((f64::MAX, Instant::now())),
        }
    }
}

impl Bandwidth {
    /// Counts `bytes` against the app at `rate` bytes a second; returns how long to hold them
    /// back so that the app stays within the rate. A rate of 0 is no limit.
    pub(crate) fn take(&self, bytes: usize, rate: u64) -> Option<Duration> {
        if rate == 0 || bytes == 0 {
            return None;
        }
        let rate = rate as f64;
        let mut balance = self.balance.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(balance.1).as_secs_f64() * rate;
        // The burst is one second at the rate: responses of ordinary size never wait.
        balance.0 = (balance.0 + earned).min(rate) - bytes as f64;
        balance.1 = now;
        (balance.0 < 0.0).then(|| Duration::from_secs_f64(-balance.0 / rate))
    }
}

/// An app's routing entry.
#[derive(Debug)]
pub(crate) struct AppRoute {
    pub app: String,
    pub slots: Vec<Slot>,
    pub settings: AppSettings,
    /// Requests in flight for the whole app; shared by every entry the app ever has, so a
    /// deploy does not reset the H11 bound.
    inflight: Arc<AtomicUsize>,
    next: Arc<AtomicUsize>,
    /// Web dynos are starting where none run yet; shared across rebuilds like `inflight`.
    booting: Arc<AtomicBool>,
    /// The app's share of the router's byte moving; shared across rebuilds like `inflight`.
    pub bandwidth: Arc<Bandwidth>,
}

impl AppRoute {
    /// True while the platform starts web dynos for an app that has none routed.
    pub(crate) fn booting(&self) -> bool {
        self.booting.load(Ordering::Acquire)
    }

    /// Chooses a dyno: the pinned one when it is still routed, else the one with the fewest
    /// requests in flight (ties in turn). Dynos in `exclude` already failed to connect.
    pub(crate) fn pick(&self, exclude: &[SocketAddr], pinned: Option<&str>) -> Option<&Slot> {
        let usable = |s: &&Slot| !exclude.contains(&s.backend.addr);
        if let Some(id) = pinned
            && let Some(slot) = self.slots.iter().filter(usable).find(|s| s.id == id)
        {
            return Some(slot);
        }
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .filter_map(|i| self.slots.get((start + i) % n))
            .filter(usable)
            .min_by_key(|s| s.load())
    }

    /// Admits one more request unless the app is at its bound (H11).
    pub(crate) fn admit(&self) -> Option<InFlight> {
        let bound = self
            .settings
            .max_concurrency
            .saturating_mul(self.slots.len().max(1));
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.inflight.clone());
        (before < bound).then_some(guard)
    }
}

/// Host-based routes for every app, under `<app>.<domain>` and custom domains.
#[derive(Debug)]
pub struct RouteTable {
    domain: String,
    apps: ArcSwap<HashMap<String, Arc<AppRoute>>>,
    /// Custom domain -> app.
    domains: ArcSwap<HashMap<String, String>>,
    /// Keys affinity ids, so a cookie reveals nothing about the dyno's address.
    ids: RandomState,
    generations: AtomicU64,
    certs: CertStore,
    /// Bytes a second each app's bodies may move through the router (0: no limit).
    app_bandwidth: AtomicU64,
}

impl RouteTable {
    /// An empty table for apps under `domain` (e.g. `localhost`).
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            apps: ArcSwap::from_pointee(HashMap::new()),
            domains: ArcSwap::from_pointee(HashMap::new()),
            ids: RandomState::new(),
            generations: AtomicU64::new(1),
            certs: CertStore::new(),
            app_bandwidth: AtomicU64::new(0),
        }
    }

    /// Limits the request and response body bytes each app moves through the router to
    /// `bytes_per_second` (0: no limit), so that one app's huge transfers cannot take the
    /// router's cores from the others. The operator's setting, not an app's.
    pub fn set_app_bandwidth(&self, bytes_per_second: u64) {
        self.app_bandwidth
            .store(bytes_per_second, Ordering::Relaxed);
    }

    /// Each app's bandwidth, in bytes a second (0: no limit).
    pub(crate) fn app_bandwidth(&self) -> u64 {
        self.app_bandwidth.load(Ordering::Relaxed)
    }

    /// The HTTPS certificates, chosen per handshake by the host's app.
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    /// The app a host belongs to, whether or not it has dynos.
    pub(crate) fn owner(&self, host: &str) -> Option<String> {
        let host = normalize(host);
        if let Some(app) = self.domains.load().get(&host) {
            return Some(app.clone());
        }
        let app = host.strip_suffix(&self.domain)?.strip_suffix('.')?;
        (!app.is_empty() && !app.contains('.')).then(|| app.to_owned())
    }

    /// The apps' parent domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn build(
        &self,
        app: &str,
        prior: Option<&Arc<AppRoute>>,
        backends: Vec<Backend>,
        settings: AppSettings,
    ) -> AppRoute {
        let slots = backends
            .into_iter()
            .map(|backend| {
                // A dyno that stays routed keeps its count of requests in flight.
                let kept = prior.and_then(|p| p.slots.iter().find(|s| s.backend == backend));
                let inflight = kept.map(|s| s.inflight.clone()).unwrap_or_default();
                let generation = kept
                    .map(|s| s.generation)
                    .unwrap_or_else(|| self.generations.fetch_add(1, Ordering::Relaxed));
                let id = format!("{:016x}", self.ids.hash_one((&backend.dyno, backend.addr)));
                Slot {
                    backend,
                    id,
                    generation,
                    inflight,
                }
            })
            .collect();
        AppRoute {
            app: app.to_owned(),
            slots,
            settings,
            inflight: prior.map(|p| p.inflight.clone()).unwrap_or_default(),
            next: prior.map(|p| p.next.clone()).unwrap_or_default(),
            booting: prior.map(|p| p.booting.clone()).unwrap_or_default(),
            bandwidth: prior.map(|p| p.bandwidth.clone()).unwrap_or_default(),
        }
    }

    /// Sets an app's web dynos (an empty list: the app exists but has none running). The
    /// app's settings stay as they are.
    pub fn set_app(&self, app: &str, backends: Vec<Backend>) {
        self.apps.rcu(|current| {
            let prior = current.get(app);
            let settings = prior.map(|p| p.settings.clone()).unwrap_or_default();
            let route = self.build(app, prior, backends.clone(), settings);
            let mut next = HashMap::clone(current);
            next.insert(app.to_owned(), Arc::new(route));
            next
        });
    }

    /// Marks an app's web dynos as starting (or no longer). While the app has none routed,
    /// requests wait for them up to the app's boot timeout (then H20) instead of getting H14.
    pub fn set_booting(&self, app: &str, booting: bool) {
        if self.apps.load().get(app).is_none() {
            self.set_app(app, Vec::new());
        }
        if let Some(route) = self.apps.load().get(app) {
            route.booting.store(booting, Ordering::Release);
        }
    }

    /// Sets an app's router settings; its dynos stay as they are.
    pub fn set_settings(&self, app: &str, settings: AppSettings) {
        self.apps.rcu(|current| {
            let prior = current.get(app);
            let backends = prior
                .map(|p| p.slots.iter().map(|s| s.backend.clone()).collect())
                .unwrap_or_default();
            let route = self.build(app, prior, backends, settings.clone());
            let mut next = HashMap::clone(current);
            next.insert(app.to_owned(), Arc::new(route));
            next
        });
    }

    /// An app's current settings.
    pub fn settings(&self, app: &str) -> Option<AppSettings> {
        self.apps.load().get(app).map(|r| r.settings.clone())
    }

    /// Makes exactly `domains` (lowercase host names) route to `app`.
    pub fn set_domains(&self, app: &str, domains: &[String]) {
        self.domains.rcu(|current| {
            let mut next: HashMap<String, String> = current
                .iter()
                .filter(|(_, a)| a.as_str() != app)
                .map(|(d, a)| (d.clone(), a.clone()))
                .collect();
            for d in domains {
                next.insert(normalize(d), app.to_owned());
            }
            next
        });
    }

    /// Forgets an app and its custom domains; its hostnames then answer 404.
    pub fn remove_app(&self, app: &str) {
        self.apps.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(app);
            next
        });
        self.set_domains(app, &[]);
    }

    /// The backends currently routed for `app`.
    pub fn backends(&self, app: &str) -> Option<Vec<Backend>> {
        self.apps
            .load()
            .get(app)
            .map(|r| r.slots.iter().map(|s| s.backend.clone()).collect())
    }

    /// The app's current entry.
    pub(crate) fn route(&self, app: &str) -> Option<Arc<AppRoute>> {
        self.apps.load().get(app).cloned()
    }

    /// Resolves a `Host` header value to an app's route: a custom domain, or `<app>.<domain>`.
    pub(crate) fn lookup(&self, host: &str) -> Option<Arc<AppRoute>> {
        let host = normalize(host);
        if let Some(app) = self.domains.load().get(&host) {
            return self.route(app);
        }
        let app = host.strip_suffix(&self.domain)?.strip_suffix('.')?;
        if app.is_empty() || app.contains('.') {
            return None;
        }
        self.route(app)
    }
}

pub(crate) fn normalize(host: &str) -> String {
    strip_port(host).trim_end_matches('.').to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literals never name an app.
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(p: u16) -> Backend {
        Backend {
            dyno: format!("web.{p}"),
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
        }
    }

    /// Each app has its own bucket, and a deploy or scale (a rebuilt entry) keeps it, so a
    /// new release does not get a fresh burst.
    #[test]
    fn bandwidth_is_per_app_and_outlives_rebuilds() {
        let t = RouteTable::new("localhost");
        let web = |port| Backend {
            dyno: "web.1".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        t.set_app("a-app", vec![web(1)]);
        t.set_app("b-app", vec![web(2)]);
        let bucket = |app| t.route(app).map(|r| r.bandwidth.clone()).expect("routed");
        let a = bucket("a-app");
        assert!(!Arc::ptr_eq(&a, &bucket("b-app")));
        t.set_app("a-app", vec![web(3)]);
        t.set_settings("a-app", AppSettings::default());
        assert!(Arc::ptr_eq(&a, &bucket("a-app")));
    }

    /// A second's worth passes at once; past it each chunk waits for the time its bytes
    /// take at the rate, counting what the app's other connections owe.
    #[test]
    fn bandwidth_lets_a_burst_through_then_holds_to_the_rate() {
        let b = Bandwidth::default();
        assert_eq!(b.take(1 << 20, 0), None, "no limit");
        let rate = 1 << 20;
        assert_eq!(b.take(512 << 10, rate), None);
        assert_eq!(b.take(512 << 10, rate), None);
        let wait = b.take(256 << 10, rate).expect("over the burst");
        // A quarter of the rate owed: a quarter second, less what the time between the calls
        // earned.
        assert!(wait <= Duration::from_millis(250), "{wait:?}");
        let more = b.take(256 << 10, rate).expect("still owing");
        assert!(more > wait, "{more:?} after {wait:?}");
    }

    #[test]
    fn resolves_app_hosts() {
        let t = RouteTable::new("localhost");
        t.set_app("hello", vec![mk(1)]);
        for host in [
            "hello.localhost",
            "hello.localhost:8080",
            "HELLO.LOCALHOST.",
            "hello.localhost.",
        ] {
            assert_eq!(
                t.lookup(host).map(|r| r.app.clone()),
                Some("hello".into()),
                "{host}"
            );
        }
        for host in [
            "localhost",
            "other.localhost",
            "a.hello.localhost",
            "hellolocalhost",
            "",
            "[::1]:80",
        ] {
            assert!(t.lookup(host).is_none(), "{host}");
        }
        t.remove_app("hello");
        assert!(t.lookup("hello.localhost").is_none());
    }

    #[test]
    fn resolves_custom_domains() {
        let t = RouteTable::new("localhost");
        t.set_app("hello", vec![mk(1)]);
        t.set_domains("hello", &["www.example.com".into()]);
        let app = |h: &str| t.lookup(h).map(|r| r.app.clone());
        assert_eq!(app("WWW.example.com:8080"), Some("hello".into()));
        assert_eq!(app("example.com"), None);
        t.set_domains("hello", &[]);
        assert_eq!(app("www.example.com"), None);
        t.set_domains("hello", &["a.example.com".into()]);
        t.remove_app("hello");
        assert_eq!(app("a.example.com"), None);
    }

    #[test]
    fn rotates_idle_backends() {
        let t = RouteTable::new("localhost");
        t.set_app("a-app", vec![mk(1), mk(2)]);
        let r = t.lookup("a-app.localhost").expect("route");
        let picks: Vec<_> = (0..4)
            .filter_map(|_| r.pick(&[], None).map(|s| s.backend.addr.port()))
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }

    #[test]
    fn prefers_the_least_loaded_backend() {
        let t = RouteTable::new("localhost");
        t.set_app("a-app", vec![mk(1), mk(2), mk(3)]);
        let r = t.route("a-app").expect("route");
        let busy: Vec<_> = r.slots.iter().take(2).map(Slot::track).collect();
        for _ in 0..5 {
            assert_eq!(r.pick(&[], None).map(|s| s.backend.addr.port()), Some(3));
        }
        drop(busy);
        let generations: Vec<u64> = r.slots.iter().map(|s| s.generation).collect();
        // Load (and the connection pool key) survives a route change for dynos that stay.
        let _held = r
            .slots
            .iter()
            .find(|s| s.backend.addr.port() == 2)
            .map(Slot::track);
        t.set_app("a-app", vec![mk(2), mk(4)]);
        let r = t.route("a-app").expect("route");
        assert_eq!(
            r.slots.first().map(|s| s.generation),
            generations.get(1).copied()
        );
        assert!(!generations.contains(&r.slots.get(1).map(|s| s.generation).unwrap_or(0)));
        for _ in 0..3 {
            assert_eq!(r.pick(&[], None).map(|s| s.backend.addr.port()), Some(4));
        }
    }

    #[test]
    fn skips_excluded_and_honours_pins() {
        let t = RouteTable::new("localhost");
        t.set_app("a-app", vec![mk(1), mk(2)]);
        let r = t.route("a-app").expect("route");
        let one = mk(1).addr;
        for _ in 0..3 {
            assert_eq!(r.pick(&[one], None).map(|s| s.backend.addr.port()), Some(2));
        }
        assert!(r.pick(&[one, mk(2).addr], None).is_none());
        let id = r.slots.first().map(|s| s.id.clone()).expect("slot");
        for _ in 0..3 {
            assert_eq!(
                r.pick(&[], Some(&id)).map(|s| s.backend.addr.port()),
                Some(1)
            );
        }
        // A pin to a dyno that failed (or is gone) falls back to the others.
        assert_eq!(
            r.pick(&[one], Some(&id)).map(|s| s.backend.addr.port()),
            Some(2)
        );
        assert!(r.pick(&[], Some("unknown")).is_some());
    }

    #[test]
    fn bounds_requests_in_flight() {
        let t = RouteTable::new("localhost");
        t.set_app("a-app", vec![mk(1), mk(2)]);
        t.set_settings(
            "a-app",
            AppSettings {
                max_concurrency: 1,
                ..AppSettings::default()
            },
        );
        assert_eq!(t.backends("a-app").map(|b| b.len()), Some(2));
        let r = t.route("a-app").expect("route");
        let a = r.admit().expect("first");
        let b = r.admit().expect("second");
        assert!(r.admit().is_none());
        drop(a);
        let _c = r.admit().expect("after one finished");
        drop(b);
        // The count survives a new entry for the app.
        t.set_app("a-app", vec![mk(3)]);
        let r = t.route("a-app").expect("route");
        assert!(r.admit().is_none());
    }
}

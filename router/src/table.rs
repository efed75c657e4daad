//! The route table: host -> app -> web dynos. Readers take a snapshot without locking
//! (`ArcSwap`); writers replace one app's entry at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

/// One web dyno the router may send requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The dyno's name (`web.1`), for logs.
    pub dyno: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// An app's routing entry.
#[derive(Debug)]
pub(crate) struct AppRoute {
    pub app: String,
    pub backends: Vec<Backend>,
    next: AtomicUsize,
}

impl AppRoute {
    /// Picks the next backend in turn.
    pub(crate) fn pick(&self) -> Option<&Backend> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends.get(i)
    }
}

/// Host-based routes for every app, under `<app>.<domain>`.
#[derive(Debug)]
pub struct RouteTable {
    domain: String,
    apps: ArcSwap<HashMap<String, Arc<AppRoute>>>,
}

impl RouteTable {
    /// An empty table for apps under `domain` (e.g. `localhost`).
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            apps: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The apps' parent domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Sets an app's web dynos (an empty list: the app exists but has none running).
    pub fn set_app(&self, app: &str, backends: Vec<Backend>) {
        let route = Arc::new(AppRoute {
            app: app.to_owned(),
            backends,
            next: AtomicUsize::new(0),
        });
        self.apps.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(app.to_owned(), route.clone());
            next
        });
    }

    /// Forgets an app; its hostname then answers 404.
    pub fn remove_app(&self, app: &str) {
        self.apps.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(app);
            next
        });
    }

    /// The backends currently routed for `app`.
    pub fn backends(&self, app: &str) -> Option<Vec<Backend>> {
        self.apps.load().get(app).map(|r| r.backends.clone())
    }

    /// Resolves a `Host` header value to an app's route.
    pub(crate) fn lookup(&self, host: &str) -> Option<Arc<AppRoute>> {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let app = host.strip_suffix(&self.domain)?.strip_suffix('.')?;
        if app.is_empty() || app.contains('.') {
            return None;
        }
        self.apps.load().get(app).cloned()
    }
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

    #[test]
    fn resolves_app_hosts() {
        let t = RouteTable::new("localhost");
        let b = Backend {
            dyno: "web.1".into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
        };
        t.set_app("hello", vec![b.clone()]);
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
    fn rotates_backends() {
        let t = RouteTable::new("localhost");
        let mk = |p: u16| Backend {
            dyno: format!("web.{p}"),
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
        };
        t.set_app("a-app", vec![mk(1), mk(2)]);
        let r = t.lookup("a-app.localhost").expect("route");
        let picks: Vec<_> = (0..4)
            .filter_map(|_| r.pick().map(|b| b.addr.port()))
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }
}

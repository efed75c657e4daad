//! Outbound HTTP from guests (`wasi:http/outgoing-handler`), governed per app.
//!
//! By default a guest may call any public address, as a Heroku app calls other APIs, but
//! nothing on the host or private networks: that keeps the platform's own API, router and
//! dynos (all on loopback) and the operator's internal network out of reach. The
//! `SKIFF_OUTBOUND_ALLOW` config var replaces that default with an explicit list.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::dyno::LogSink;

/// Which destinations an app's guests may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Public addresses only (the default).
    Public,
    /// Nothing at all (`SKIFF_OUTBOUND_ALLOW=none`).
    Closed,
    /// Exactly these `host` or `host:port` entries (`*` adds every public address).
    List {
        /// Explicitly allowed hosts, with an optional port.
        entries: Vec<(String, Option<u16>)>,
        /// Whether `*` was listed.
        public: bool,
    },
}

impl OutboundPolicy {
    /// Reads `SKIFF_OUTBOUND_ALLOW`: unset means public-only; `none` closes outbound HTTP;
    /// otherwise a comma-separated list of `host`, `host:port` and `*`.
    pub fn from_config(value: Option<&str>) -> Self {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Self::Public;
        };
        if value.eq_ignore_ascii_case("none") {
            return Self::Closed;
        }
        let mut entries = Vec::new();
        let mut public = false;
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                public = true;
                continue;
            }
            let (host, port) = match item.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
                _ => (item, None),
            };
            entries.push((host.trim_matches(['[', ']']).to_ascii_lowercase(), port));
        }
        Self::List { entries, public }
    }

    fn listed(&self, host: &str, port: u16) -> bool {
        match self {
            Self::List { entries, .. } => entries
                .iter()
                .any(|(h, p)| h == &host.to_ascii_lowercase() && p.is_none_or(|p| p == port)),
            _ => false,
        }
    }

    fn allows_public(&self) -> bool {
        matches!(self, Self::Public | Self::List { public: true, .. })
    }

    /// Whether a request to `host:port`, resolved to `ip`, may go out.
    pub fn allows(&self, host: &str, port: u16, ip: IpAddr) -> bool {
        self.listed(host, port) || (self.allows_public() && is_public(ip))
    }
}

/// Addresses that belong to the internet at large, not to this host or a private network.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // carrier-grade NAT
                || (o[0] == 198 && (18..20).contains(&o[1]))) // benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// The hooks a dyno's store uses for outbound HTTP.
pub(crate) struct Outbound {
    pub(crate) policy: Arc<OutboundPolicy>,
    pub(crate) app: String,
    pub(crate) dyno: String,
    pub(crate) log: Option<Arc<dyn LogSink>>,
}

type BoxFuture<T> = Box<dyn Future<Output = T> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: BoxFuture<Result<(), Error>>,
    ) -> BoxFuture<
        wasmtime_wasi_http::Result<(http::Response<WasiBody>, BoxFuture<Result<(), Error>>)>,
    > {
        let policy = self.policy.clone();
        let refuse = {
            let log = self.log.clone();
            let app = self.app.clone();
            let dyno = self.dyno.clone();
            move |why: String| {
                if let Some(log) = &log {
                    log.line(&app, &dyno, &format!("Outbound request refused: {why}"));
                }
                tracing::info!(app = %app, dyno = %dyno, "outbound request refused: {why}");
            }
        };
        Box::new(async move {
            let uri = request.uri().clone();
            if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
                refuse(format!(
                    "{uri}: only http:// is supported for outbound calls so far"
                ));
                return Err(Error::HttpRequestDenied);
            }
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(80);
            if matches!(*policy, OutboundPolicy::Closed) {
                refuse(format!(
                    "{host}:{port}: outbound HTTP is closed (SKIFF_OUTBOUND_ALLOW=none)"
                ));
                return Err(Error::HttpRequestDenied);
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| Error::DnsError {
                    rcode: Some("lookup failed".into()),
                    info_code: None,
                })?
                .collect();
            // Connect to an address that was checked, so a second lookup cannot swap it.
            let Some(addr) = addrs
                .iter()
                .copied()
                .find(|a| policy.allows(&host, port, a.ip()))
            else {
                refuse(format!(
                    "{host}:{port} is not allowed (private or host address; list it in SKIFF_OUTBOUND_ALLOW)"
                ));
                return Err(Error::HttpRequestDenied);
            };
            let connect_timeout = options
                .as_ref()
                .and_then(|o| o.connect_timeout)
                .unwrap_or(Duration::from_secs(10));
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(|_| Error::ConnectionRefused)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let conn = tokio::spawn(conn);
            let (mut parts, body) = request.into_parts();
            // HTTP/1.1 sends the origin form; the authority travels in the Host header.
            parts.uri = parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/")
                .parse()
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let response = sender
                .send_request(http::Request::from_parts(parts, body))
                .await?;
            let response = response.map(|b| b.map_err(Error::from).boxed_unsync());
            let io: BoxFuture<Result<(), Error>> = Box::new(async move {
                match conn.await {
                    Ok(result) => result.map_err(Error::from),
                    Err(_) => Err(Error::ConnectionTerminated),
                }
            });
            Ok((response, io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_keeps_private_and_host_addresses_out() {
        let p = OutboundPolicy::from_config(None);
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "0.0.0.0",
        ] {
            assert!(
                !p.allows("x", 80, private.parse().expect("ip")),
                "{private}"
            );
        }
        assert!(p.allows("example.org", 80, "93.184.216.34".parse().expect("ip")));
    }

    #[test]
    fn explicit_lists() {
        let p = OutboundPolicy::from_config(Some("127.0.0.1:8080, api.internal"));
        assert!(p.allows("127.0.0.1", 8080, "127.0.0.1".parse().expect("ip")));
        assert!(!p.allows("127.0.0.1", 8081, "127.0.0.1".parse().expect("ip")));
        assert!(p.allows("API.internal", 443, "10.0.0.5".parse().expect("ip")));
        assert!(
            !p.allows("example.org", 80, "93.184.216.34".parse().expect("ip")),
            "no * given"
        );
        let p = OutboundPolicy::from_config(Some("*"));
        assert!(p.allows("example.org", 80, "93.184.216.34".parse().expect("ip")));
        assert!(!p.allows("x", 80, "10.0.0.1".parse().expect("ip")));
        assert_eq!(
            OutboundPolicy::from_config(Some("none")),
            OutboundPolicy::Closed
        );
    }
}

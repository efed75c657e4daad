//! HTTPS: certificates per domain, chosen by SNI during the handshake. The platform replaces
//! the set in place when a user adds or removes a certificate, so no listener restarts.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::table::RouteTable;

/// Why a certificate and key pair was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The certificate PEM holds no certificate.
    #[error("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// The key PEM holds no private key.
    #[error("no PEM private key found (expected -----BEGIN PRIVATE KEY----- or similar)")]
    NoKey,
    /// A PEM block could not be decoded.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The certificate itself is malformed.
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    /// The key is of a kind rustls cannot sign with.
    #[error("unsupported private key: {0}")]
    Key(String),
    /// The key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    Mismatch,
    /// Neither SAN nor CN names a host.
    #[error("the certificate names no DNS host (no subjectAltName DNS entry or CN)")]
    NoNames,
}

/// A parsed certificate chain and key, ready to serve.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// DNS names it covers (lowercase; may include `*.example.com`).
    pub names: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// Issuer distinguished name, for `certs:info`.
    pub issuer: String,
    /// True when the issuer is the subject (nobody vouches for it).
    pub self_signed: bool,
    key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and its PEM private key, checking they belong together.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Pem(e.to_string()))?;
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey,
            other => CertError::Pem(other.to_string()),
        })?;
        let signer = any_supported_type(&key).map_err(|e| CertError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain.clone(), signer);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(CertError::Mismatch),
            // rustls cannot tell for some key types; the handshake will fail loudly instead.
            Err(_) => {}
        }

        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| CertError::Certificate(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            names.extend(
                parsed
                    .subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(str::to_ascii_lowercase),
            );
        }
        names.retain(|n| !n.is_empty() && n.len() <= 253);
        names.dedup();
        if names.is_empty() {
            return Err(CertError::NoNames);
        }
        Ok(Self {
            names,
            not_after: parsed.validity().not_after.timestamp(),
            issuer: parsed.issuer().to_string(),
            self_signed: parsed.issuer() == parsed.subject(),
            key: Arc::new(certified),
        })
    }

    /// Whether this certificate is valid for `host` (exact, or one-label wildcard).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|name| name_matches(name, &host))
    }
}

fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Whose a certificate is: the platform's (for `*.<domain>`, set by the operator) or an app's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Platform,
    App(String),
}

/// The certificates the HTTPS listener serves. Each belongs to the platform or to one app, and
/// an app's certificate is only ever presented for hosts routed to that app, so an app cannot
/// answer TLS for another app's domain by uploading a certificate that names it.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: ArcSwap<HashMap<(Owner, String), Certificate>>,
}

impl CertStore {
    /// An empty store: HTTPS handshakes fail until a certificate covers the host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the platform's certificate (for hosts under the apps' domain).
    pub fn set_platform(&self, cert: Certificate) {
        self.put((Owner::Platform, String::new()), Some(cert));
    }

    /// Adds or replaces `app`'s certificate named `name`.
    pub fn insert(&self, app: &str, name: &str, cert: Certificate) {
        self.put((Owner::App(app.to_owned()), name.to_owned()), Some(cert));
    }

    /// Removes `app`'s certificate named `name`.
    pub fn remove(&self, app: &str, name: &str) {
        self.put((Owner::App(app.to_owned()), name.to_owned()), None);
    }

    /// Removes every certificate of `app`.
    pub fn remove_app(&self, app: &str) {
        self.certs.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.retain(|(owner, _), _| *owner != Owner::App(app.to_owned()));
            next
        });
    }

    fn put(&self, key: (Owner, String), cert: Option<Certificate>) {
        self.certs.rcu(|current| {
            let mut next = HashMap::clone(current);
            match &cert {
                Some(c) => next.insert(key.clone(), c.clone()),
                None => next.remove(&key),
            };
            next
        });
    }

    /// The key to present for `host`, routed to `app`: one of the app's certificates, else the
    /// platform's. An exact name beats a wildcard, and among equals the certificate that
    /// expires last wins (so a renewed certificate takes over at once).
    pub fn lookup(&self, host: &str, app: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let certs = self.certs.load();
        let best = |owner: &Owner| {
            let mine = || certs.iter().filter(move |((o, _), _)| o == owner);
            mine()
                .filter(|(_, c)| c.names.contains(&host))
                .max_by_key(|(_, c)| c.not_after)
                .or_else(|| {
                    mine()
                        .filter(|(_, c)| c.covers(&host))
                        .max_by_key(|(_, c)| c.not_after)
                })
                .map(|(_, c)| c.key.clone())
        };
        app.and_then(|a| best(&Owner::App(a.to_owned())))
            .or_else(|| best(&Owner::Platform))
    }
}

/// Picks a certificate by SNI for Pingora's rustls listener.
#[derive(Debug)]
pub(crate) struct SniResolver(pub Arc<RouteTable>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (an IP literal or an old client) no app can be told apart.
        let name = hello.server_name()?;
        let app = self.0.owner(name);
        let found = self.0.certs().lookup(name, app.as_deref());
        if found.is_none() {
            tracing::debug!(sni = name, "no certificate for this host");
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("example.com", "example.com"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Certificate::from_pem(b"nope", b"nope"),
            Err(CertError::NoCertificate | CertError::Pem(_))
        ));
    }
}

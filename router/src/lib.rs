//! Skiff's router: every app request crosses it. Built on Pingora, it maps the `Host` header to
//! an app through a [`RouteTable`] that the platform updates in place (no restart, no lock on
//! the request path), and forwards to the app's web dynos over loopback HTTP.

mod guard;
mod pages;
mod proxy;
mod table;
mod tls;

pub use proxy::{AccessLog, DEFAULT_HEAD_TIMEOUT, RouterConfig, RouterHandle, spawn_router};
pub use table::{AppSettings, Backend, RouteTable};
pub use tls::{CertError, CertStore, Certificate};

/// Errors from starting the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The listen address is taken or not allowed. (The OS error is the source, which error
    /// reports print after this message.)
    #[error("router cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The router thread could not be started.
    #[error("router thread could not start")]
    Thread(#[source] std::io::Error),
    /// Pingora did not accept connections on an address in time (its log says why).
    #[error("router did not start listening on {addr} within {timeout:?}")]
    NotListening {
        /// The address.
        addr: std::net::SocketAddr,
        /// How long the platform waited.
        timeout: std::time::Duration,
    },
    /// The router's thread ended before it listened on an address (its log says why).
    #[error("router stopped before it listened on {addr}")]
    Stopped {
        /// The address.
        addr: std::net::SocketAddr,
    },
}

//! What every SeSPHR process shares to be part of the mesh: mTLS configs and
//! the dev PKI ([`tls`], [`pki`]), the accept path in front of every listener
//! ([`transport`]), the layers every request passes before a handler
//! ([`auth`]: who the caller is and whether the RPC table lets it call;
//! [`limits`]: per-identity rate and concurrency), the AccessPolicy client
//! the other services ask and audit through ([`policy_client`]), and the one
//! mapping of domain errors to gRPC statuses ([`status`]).
//!
//! Identity is apart from TLS: [`auth`] reads the verified certificate once
//! per connection and hands handlers a typed
//! [`Caller`](sesphr_identity::Caller); no handler looks at certificates.

pub mod auth;
pub mod connect;
pub mod deny;
pub mod directory;
pub mod handler;
pub mod limits;
pub mod pki;
pub mod policy_client;
pub mod ratelimit;
pub mod status;
pub mod tls;
pub mod transport;
pub mod trust;

pub use handler::{blocking, require_field, unix_now};
pub use ratelimit::RateLimiter;

/// An error and its causes on one line, each cause once (many errors already
/// quote their source in their own message). For command-line reports.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        next = cause.source();
    }
    out.replace('\n', " ")
}

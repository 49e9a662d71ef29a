//! SeSPHR: secure, patient-controlled sharing of Personal Health Records on an
//! untrusted cloud, using proxy re-encryption.
//!
//! This crate is the root of the workspace: it owns the wire contract
//! ([`proto`]), the mesh's identity and transport layer ([`tls`], [`pki`],
//! [`auth`]), the gRPC handlers that put the domain crates under `services/`
//! on the network ([`server`]), the daemon ([`daemon`]) and the client SDK.
//! See `ARCHITECTURE.md` for where things live and which boundaries matter.

pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fhir;
pub mod limits;
pub mod pki;
pub mod proto;
pub mod record;
pub mod server;
pub mod tls;
pub mod transport;

pub use sesphr_crypto as crypto;
pub use sesphr_identity as identity;

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

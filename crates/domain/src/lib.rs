//! What the three SeSPHR services share below the wire: one error
//! vocabulary ([`DomainError`]), the reader of their stored values
//! ([`codec::Reader`]) and their per-store secrets ([`secret`]).
//!
//! Knows nothing of tonic: the mesh crate maps [`DomainError`] to gRPC
//! statuses in one place (`sesphr_mesh::status`), so a domain rule is
//! testable without a server.

#![warn(missing_docs)]

pub mod codec;
mod error;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod reopen;
#[cfg(feature = "sled")]
pub mod secret;

pub use error::{BackendError, DomainError};

//! One error type for every service domain. Each variant is a fact about
//! the request or the store, not a status code; `sesphr_mesh::status`
//! decides what a client is told. Messages quote ids, never key material or
//! content.

use sesphr_identity::IdentityError;

/// Everything a service's domain logic can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// An id, partition or role in the request breaks its syntax.
    #[error(transparent)]
    BadName(#[from] IdentityError),
    /// A request field is missing, out of range or does not decode.
    #[error("{0}")]
    Malformed(String),
    /// What the request names does not exist, or the caller may not learn
    /// that it does (the two answers are the same on purpose).
    #[error("{0}")]
    Unknown(String),
    /// What the request would create exists already.
    #[error("{0}")]
    Exists(String),
    /// The caller is not entitled to this: not the owner, not granted, or
    /// of the wrong role.
    #[error("{0}")]
    NotEntitled(String),
    /// The current state does not allow it: a stale key epoch, an upload
    /// that does not match its header, a challenge that is not open.
    #[error("{0}")]
    Conflict(String),
    /// An allowance of the caller is used up for now (redraws, probes).
    #[error("{0}")]
    UsedUp(String),
    /// Stored bytes fail to decode or verify: the store was damaged.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The storage backend failed; the operation was not applied.
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// The credentials presented are not valid.
    #[error("{0}")]
    BadCredentials(String),
    /// Something the answer depends on could not be had right now (the
    /// access-policy service did not answer); nothing was decided.
    #[error("{0}")]
    Unavailable(String),
}

/// A failure of the storage backend, kept apart so its details are logged
/// and not sent.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The embedded database.
    #[error("database: {0}")]
    Sled(Box<dyn std::error::Error + Send + Sync>),
    /// Files beside the database (ciphertext objects, secrets).
    #[error("files: {0}")]
    Files(String),
    /// The scale-out metadata database.
    #[error("postgres: {0}")]
    Postgres(Box<dyn std::error::Error + Send + Sync>),
    /// The scale-out object store (S3 API).
    #[error("object store: {0}")]
    Objects(Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(feature = "sled")]
impl From<sled::Error> for DomainError {
    fn from(e: sled::Error) -> Self {
        DomainError::Backend(BackendError::Sled(Box::new(e)))
    }
}

#[cfg(feature = "sled")]
impl From<sled::transaction::TransactionError<DomainError>> for DomainError {
    fn from(e: sled::transaction::TransactionError<DomainError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}

impl BackendError {
    /// What kind of storage failed, as clients and the audit trail are told
    /// (the details stay in the log).
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Sled(_) | BackendError::Postgres(_) => "database",
            BackendError::Files(_) => "file",
            BackendError::Objects(_) => "object",
        }
    }
}

impl DomainError {
    /// A file beside the database could not be read or written.
    pub fn files(what: impl std::fmt::Display) -> Self {
        DomainError::Backend(BackendError::Files(what.to_string()))
    }
}

//! Domain errors to gRPC statuses, in one place.
//!
//! [`DomainError`] names facts (an unknown record, a stale epoch, a used-up
//! allowance); this module decides what a client is told. The match is
//! exhaustive (no `_` arm), so a new fact forces a decision about its
//! status code. Backend and corruption details are logged, not sent:
//! clients get a stable, readable message.

use sesphr_domain::DomainError;
use sesphr_identity::IdentityError;
use tonic::Status;

/// Conversion of an error into the status a client sees.
pub trait IntoStatus {
    fn into_status(self) -> Status;
}

impl IntoStatus for Status {
    fn into_status(self) -> Status {
        self
    }
}

impl IntoStatus for DomainError {
    fn into_status(self) -> Status {
        match self {
            DomainError::BadName(e) => invalid(e),
            DomainError::Malformed(m) => Status::invalid_argument(m),
            DomainError::Unknown(m) => Status::not_found(m),
            DomainError::Exists(m) => Status::already_exists(m),
            DomainError::NotEntitled(m) => Status::permission_denied(m),
            DomainError::Conflict(m) => Status::failed_precondition(m),
            DomainError::UsedUp(m) => Status::resource_exhausted(m),
            DomainError::Corrupt(problem) => {
                tracing::error!(%problem, "stored data corrupt");
                Status::data_loss(format!("stored data is corrupt: {problem}"))
            }
            DomainError::Backend(e) => {
                let what = e.kind();
                tracing::error!(error = %e, "{what} storage error");
                Status::internal(format!(
                    "{what} storage error; the operation was not applied"
                ))
            }
            DomainError::BadCredentials(m) => Status::unauthenticated(m),
            DomainError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

/// Bad ids and names in requests are the caller's mistake.
pub fn invalid(e: IdentityError) -> Status {
    Status::invalid_argument(e.to_string())
}

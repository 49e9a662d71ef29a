//! Domain errors to gRPC statuses ([`IntoStatus`]; the orphan rule forbids
//! `From` impls here). Every match is exhaustive (no `_` arm), so
//! a new error variant forces a decision about its status code. Storage
//! details are logged, not sent: clients get a stable, readable message.

use sesphr_identity::IdentityError;
use tonic::Status;

fn storage_failure(what: &str, e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what} storage error");
    Status::internal(format!(
        "{what} storage error; the operation was not applied"
    ))
}

/// Conversion of an error into the status a client sees.
pub trait IntoStatus {
    fn into_status(self) -> Status;
}

impl IntoStatus for Status {
    fn into_status(self) -> Status {
        self
    }
}

impl IntoStatus for sesphr_access_policy::PolicyError {
    fn into_status(self) -> Status {
        let e = self;
        use sesphr_access_policy::PolicyError as E;
        match e {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::NotFound(m) => Status::not_found(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::PermissionDenied(m) => Status::permission_denied(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::Corrupt(m) => {
                tracing::error!(problem = %m, "access policy data corrupt");
                Status::data_loss(format!("access policy data is corrupt: {m}"))
            }
            E::Storage(e) => storage_failure("access policy", &e),
        }
    }
}

impl IntoStatus for sesphr_cloud_storage::StorageError {
    fn into_status(self) -> Status {
        let e = self;
        use sesphr_cloud_storage::StorageError as E;
        match e {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::NotFound(m) => Status::not_found(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::PermissionDenied(m) => Status::permission_denied(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::Corrupt(m) => {
                tracing::error!(problem = %m, "record store data corrupt");
                Status::data_loss(format!("stored record data is corrupt: {m}"))
            }
            E::Storage(e) => storage_failure("record", &e),
            E::Io(m) => storage_failure("record object", &m),
        }
    }
}

impl IntoStatus for sesphr_srs::SrsError {
    fn into_status(self) -> Status {
        let e = self;
        use sesphr_srs::SrsError as E;
        match e {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::NotFound(m) => Status::not_found(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::PermissionDenied(m) => Status::permission_denied(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::Corrupt(m) => {
                tracing::error!(problem = %m, "SRS data corrupt");
                Status::data_loss(format!("SRS data is corrupt: {m}"))
            }
            E::Storage(e) => storage_failure("SRS", &e),
        }
    }
}

/// Bad ids and names in requests are the caller's mistake.
pub fn invalid(e: IdentityError) -> Status {
    Status::invalid_argument(e.to_string())
}

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

fn corrupt(what: &str, problem: String) -> Status {
    tracing::error!(%problem, "{what} data corrupt");
    Status::data_loss(format!("{what} data is corrupt: {problem}"))
}

/// The domain crates share one error vocabulary; each may add variants,
/// listed after the service name (the match stays exhaustive).
macro_rules! into_status {
    ($error:path, $what:literal $(, $extra:pat => $status:expr)* $(,)?) => {
        impl IntoStatus for $error {
            fn into_status(self) -> Status {
                use $error as E;
                match self {
                    E::InvalidArgument(m) => Status::invalid_argument(m),
                    E::NotFound(m) => Status::not_found(m),
                    E::AlreadyExists(m) => Status::already_exists(m),
                    E::PermissionDenied(m) => Status::permission_denied(m),
                    E::FailedPrecondition(m) => Status::failed_precondition(m),
                    E::Corrupt(m) => corrupt($what, m),
                    E::Storage(e) => storage_failure($what, &e),
                    $($extra => $status,)*
                }
            }
        }
    };
}

into_status!(sesphr_access_policy::PolicyError, "access policy");
into_status!(sesphr_srs::SrsError, "SRS");
into_status!(
    sesphr_cloud_storage::StorageError,
    "record store",
    E::Io(m) => storage_failure("record object", &m),
    E::Exhausted(m) => Status::resource_exhausted(m),
);

/// Bad ids and names in requests are the caller's mistake.
pub fn invalid(e: IdentityError) -> Status {
    Status::invalid_argument(e.to_string())
}

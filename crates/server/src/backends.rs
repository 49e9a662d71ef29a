//! Opens each service's store on the backend its [`StorageSettings`] name:
//! sled (and object files) in the data directory, or PostgreSQL (and, for
//! CloudStorage, an S3 bucket) shared by every replica of the service.
//!
//! The services only see their store traits (`RecordBackend`,
//! `PolicyBackend`, `Store`); this module is the one place that knows which
//! implementation stands behind them.

use std::path::Path;
use std::sync::Arc;

use sesphr_access_policy::backend::PolicyBackend;
use sesphr_cloud_storage::remote::RemoteStore;
use sesphr_cloud_storage::{RecordBackend, StoreLimits};
use sesphr_srs::Store;

use crate::storage::StorageSettings;

/// Why a store did not open (the caller adds which service and where).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

impl From<sesphr_domain::DomainError> for OpenError {
    fn from(e: sesphr_domain::DomainError) -> Self {
        open_err(e)
    }
}

fn open_err(e: impl std::fmt::Display) -> OpenError {
    OpenError(e.to_string())
}

/// CloudStorage's store, and the shared one again when uploads left by
/// crashed replicas must be swept from it.
pub struct Records {
    pub store: Arc<dyn RecordBackend>,
    pub remote: Option<Arc<RemoteStore>>,
}

/// CloudStorage's records and blobs.
pub fn records(
    storage: &StorageSettings,
    data_dir: &Path,
    limits: StoreLimits,
) -> Result<Records, OpenError> {
    match storage {
        StorageSettings::Sled => Ok(Records {
            store: Arc::new(
                sesphr_cloud_storage::RecordStore::open(data_dir, limits).map_err(open_err)?,
            ),
            remote: None,
        }),
        StorageSettings::Postgres { pg, s3 } => {
            let s3 = s3.as_deref().ok_or_else(|| {
                OpenError(
                    "storage.backend = \"postgres\" needs [storage.s3] for CloudStorage's \
                     ciphertext"
                        .into(),
                )
            })?;
            let store = Arc::new(
                RemoteStore::open(pg, s3, limits, tokio::runtime::Handle::current())
                    .map_err(open_err)?,
            );
            Ok(Records {
                store: store.clone(),
                remote: Some(store),
            })
        }
    }
}

/// AccessPolicy's grants and audit log, and whether other replicas may
/// change it behind this process's back (then its deny list is re-read from
/// the store, see `daemon::follow_shared_deny_list`).
pub fn policy(
    storage: &StorageSettings,
    data_dir: &Path,
) -> Result<(Arc<dyn PolicyBackend>, bool), OpenError> {
    let refusals = sesphr_access_policy::RefusalLimits::REFUSALS;
    match storage {
        StorageSettings::Sled => Ok((
            Arc::new(
                sesphr_access_policy::PolicyStore::open_with(data_dir, refusals)
                    .map_err(open_err)?,
            ),
            false,
        )),
        StorageSettings::Postgres { pg, .. } => Ok((
            Arc::new(
                sesphr_access_policy::pg::PgPolicyStore::open(
                    pg,
                    refusals,
                    tokio::runtime::Handle::current(),
                )
                .map_err(open_err)?,
            ),
            true,
        )),
    }
}

/// The setup service's user directory (re-encryption nodes always use
/// sled: `storage` refuses PostgreSQL for them).
pub fn setup_store(
    storage: &StorageSettings,
    data_dir: &Path,
) -> Result<Arc<dyn Store>, OpenError> {
    match storage {
        StorageSettings::Sled => Ok(Arc::new(
            sesphr_srs::SrsStore::open(data_dir).map_err(open_err)?,
        )),
        StorageSettings::Postgres { pg, .. } => Ok(Arc::new(
            sesphr_srs::pg::PgStore::open(pg, tokio::runtime::Handle::current())
                .map_err(open_err)?,
        )),
    }
}

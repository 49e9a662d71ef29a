//! `sesphrd migrate`: copies one service's sled store (its old `data_dir`)
//! into the PostgreSQL (and, for CloudStorage, S3) storage its serve config
//! now names, so a single-node deployment becomes one whose replicas share
//! the data.
//!
//! Run it with the service stopped: sled takes an exclusive lock on its
//! directory, so a running service makes the copy fail before it starts.
//! Each service's copy refuses a destination that already holds data and
//! may be re-run after a failure; the sled directory is left as it was, so
//! going back is starting the old configuration again.

use std::path::{Path, PathBuf};

use sesphr_domain::reopen::retry_lock;
use sesphr_identity::Service;

use crate::config::{ServeConfig, ServiceKind};
use crate::storage::StorageSettings;

/// A copy that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(
        "storage.backend is \"sled\" in the config: set it to \"postgres\" (and, for \
         CloudStorage, [storage.s3]) to name where the data goes"
    )]
    NoDestination,
    #[error("re-encryption nodes stay on sled (each keeps its shares apart); nothing to migrate")]
    Node,
    #[error("{0} holds no sled store to copy from")]
    NothingThere(PathBuf),
    #[error("CloudStorage's ciphertext needs [storage.s3] in the config")]
    NoObjectStore,
    #[error("{path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("destination: {0}")]
    Destination(String),
}

/// Copies the sled store in `from` (default: the config's `data_dir`) to
/// the configured shared storage; returns one line saying what moved.
/// Blocking: call it off the async executor.
pub fn migrate(cfg: &ServeConfig, from: Option<&Path>) -> Result<String, MoveError> {
    let StorageSettings::Postgres { pg, s3 } = &cfg.storage else {
        return Err(MoveError::NoDestination);
    };
    let from = from.unwrap_or(&cfg.data_dir);
    // sled would create an empty database where none is: refuse instead.
    let empty = std::fs::read_dir(from).map_or(true, |mut d| d.next().is_none());
    if empty {
        return Err(MoveError::NothingThere(from.to_owned()));
    }
    let source = |e: sesphr_domain::DomainError| MoveError::Source {
        path: from.to_owned(),
        message: e.to_string(),
    };
    let dest = |e: sesphr_domain::DomainError| MoveError::Destination(e.to_string());
    let runtime = tokio::runtime::Handle::current();
    match cfg.service {
        ServiceKind::SrsNode => Err(MoveError::Node),
        ServiceKind::Service(Service::CloudStorage) => {
            let s3 = s3.as_deref().ok_or(MoveError::NoObjectStore)?;
            let limits = sesphr_cloud_storage::StoreLimits {
                max_record_size: cfg.max_record_bytes,
                dedup_scope: cfg.dedup_scope,
                ..Default::default()
            };
            // A service stopped a moment ago may still hold sled's lock briefly.
            let src = retry_lock(|| sesphr_cloud_storage::RecordStore::open(from, limits))
                .map_err(source)?;
            let dst = sesphr_cloud_storage::remote::RemoteStore::open(pg, s3, limits, runtime)
                .map_err(dest)?;
            let r = sesphr_cloud_storage::remote::copy_from_sled(&src, &dst).map_err(dest)?;
            Ok(format!(
                "cloud-storage: copied {} record(s) ({} already there from an earlier run), \
                 {} blob(s), {} ciphertext bytes, {} secret(s); {} blob reference count(s) \
                 recounted",
                r.records, r.skipped, r.blobs, r.bytes, r.secrets, r.refcount_mismatches
            ))
        }
        ServiceKind::Service(Service::AccessPolicy) => {
            let src =
                retry_lock(|| sesphr_access_policy::PolicyStore::open(from)).map_err(source)?;
            let dst = sesphr_access_policy::pg::PgPolicyStore::open(
                pg,
                sesphr_access_policy::RefusalLimits::REFUSALS,
                runtime,
            )
            .map_err(dest)?;
            let r = sesphr_access_policy::pg::copy_from_sled(&src, &dst).map_err(dest)?;
            let head = match r.audit_head {
                Some((seq, hash)) => format!("head {seq} {}", hex::encode(&hash[..8])),
                None => "empty".into(),
            };
            Ok(format!(
                "access-policy: copied {} grant(s), {} audit entries (log {head}, the same \
                 Merkle root), {} checkpoint(s), {} cosignature(s), the deny list at version \
                 {} ({} disabled user(s), {} revoked device(s))",
                r.grants,
                r.audit_entries,
                r.checkpoints,
                r.cosignatures,
                r.deny_version,
                r.disabled_users,
                r.revoked_devices
            ))
        }
        ServiceKind::Service(Service::Srs) => {
            let src = retry_lock(|| sesphr_srs::SrsStore::open(from)).map_err(source)?;
            let dst = sesphr_srs::pg::PgStore::open(pg, runtime).map_err(dest)?;
            let r = sesphr_srs::pg::copy_from_sled(&src, &dst).map_err(dest)?;
            Ok(format!(
                "srs: copied {} user(s), {} invitation(s), {} recovery setup(s), {} kfrag \
                 set(s), {} secret(s)",
                r.users, r.invitations, r.recovery_setups, r.kfrag_sets, r.secrets
            ))
        }
    }
}

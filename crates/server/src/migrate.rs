//! `sesphrd migrate-srs`: turns a dev directory an earlier `sesphrd` ran a
//! single SRS in into a 1-of-1 split mesh, keeping every record, grant and
//! content key readable.
//!
//! The single SRS kept the user directory, every kfrag set and the dedup
//! OPRF key in `DIR/srs`. Afterwards `DIR/srs` is the setup service's store
//! (users only), `DIR/srs-node-1` holds the kfrag sets, and the OPRF key is
//! dealt 1-of-1 to node 1, which makes node 1's share the old key itself, so
//! deduplicated blobs keep their content keys. Grants stay 1-of-1 until the
//! owner re-grants on a larger mesh (docs/design.md).

use std::path::{Path, PathBuf};

use sesphr_domain::reopen::retry_lock;
use sesphr_srs::{SrsStore, Store};

use crate::daemon::dev_dealing_dir;

/// The derivation info and secret name the single SRS derived its OPRF key
/// with (kept here: only a migration still needs them).
const SINGLE_SRS_OPRF_KEY_INFO: &[u8] = b"SeSPHR dedup content keys";
const SINGLE_SRS_OPRF_SEED_SECRET: &str = "dedup-oprf-seed";

/// A migration that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0} holds no single-SRS mesh (no srs/ directory)")]
    NothingToMigrate(PathBuf),
    #[error("{0} is already split into setup and re-encryption nodes")]
    AlreadySplit(PathBuf),
    #[error("{path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error(transparent)]
    Dealing(#[from] crate::dealing::DealingError),
}

/// What a migration moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub kfrag_sets: usize,
}

/// Splits the single SRS in `dir` (see the module doc). Idempotent in
/// effect: kfrag sets are copied, made durable, and only then removed from
/// the old store; the dealing is written last of all.
pub fn migrate_single_srs(dir: &Path) -> Result<Migrated, MigrateError> {
    let old_dir = dir.join("srs");
    if !old_dir.exists() {
        return Err(MigrateError::NothingToMigrate(dir.to_owned()));
    }
    let dealing_dir = dev_dealing_dir(dir);
    if crate::dealing::load(&dealing_dir)?.is_some() {
        return Err(MigrateError::AlreadySplit(dir.to_owned()));
    }
    let store_err = |path: &Path| {
        let path = path.to_owned();
        move |e: sesphr_srs::DomainError| MigrateError::Store {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    // Reopened right after a stop: sled's flusher may hold the lock a moment.
    let old = retry_lock(|| SrsStore::open(&old_dir)).map_err(store_err(&old_dir))?;
    let seed = old
        .service_secret(SINGLE_SRS_OPRF_SEED_SECRET)
        .map_err(store_err(&old_dir))?;
    let key = sesphr_dedup::ServerKey::derive(&seed, SINGLE_SRS_OPRF_KEY_INFO).map_err(|e| {
        MigrateError::Store {
            path: old_dir.clone(),
            message: format!("the OPRF key cannot be derived: {e}"),
        }
    })?;
    let node_dir = dir.join("srs-node-1");
    let node = retry_lock(|| SrsStore::open(&node_dir)).map_err(store_err(&node_dir))?;
    let sets = old.kfrag_sets().map_err(store_err(&old_dir))?;
    for (owner, partition, grantee, epoch, set) in &sets {
        // Every put is flushed before it returns.
        node.put_kfrags(owner, partition, *epoch, grantee, set.clone())
            .map_err(store_err(&node_dir))?;
    }
    for (owner, partition, grantee, epoch, _) in &sets {
        old.delete_kfrags(owner, partition, grantee, Some(*epoch))
            .map_err(store_err(&old_dir))?;
    }
    crate::dealing::deal(&dealing_dir, 1, 1, Some(&key))?;
    Ok(Migrated {
        kfrag_sets: sets.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesphr_srs::KfragSet;

    /// The old OPRF key becomes node 1's share (same content keys), every
    /// kfrag set moves to node 1, users stay with the setup service.
    #[test]
    fn the_old_key_and_sets_move_to_node_one() {
        let dir = tempfile::tempdir().unwrap();
        let old_key = {
            let old = SrsStore::open(&dir.path().join("srs")).unwrap();
            let set = KfragSet {
                delegating_public_key: vec![2; 33],
                kfrags: vec![vec![7; 100]],
                stored_at: 1,
            };
            old.put_kfrags("alice", "medical", 3, "bob", set).unwrap();
            let seed = old.service_secret(SINGLE_SRS_OPRF_SEED_SECRET).unwrap();
            sesphr_dedup::ServerKey::derive(&seed, SINGLE_SRS_OPRF_KEY_INFO).unwrap()
        };
        let done = migrate_single_srs(dir.path()).unwrap();
        assert_eq!(done, Migrated { kfrag_sets: 1 });
        let dealing = crate::dealing::load(&dev_dealing_dir(dir.path()))
            .unwrap()
            .unwrap();
        assert_eq!((dealing.threshold, dealing.nodes()), (1, 1));
        assert_eq!(
            dealing.srs_nodes[0].oprf_public_share,
            hex::encode(old_key.public_key())
        );
        let node = retry_lock(|| SrsStore::open(&dir.path().join("srs-node-1"))).unwrap();
        assert!(node.kfrags("alice", "medical", 3, "bob").unwrap().is_some());
        let old = retry_lock(|| SrsStore::open(&dir.path().join("srs"))).unwrap();
        assert!(old.kfrag_sets().unwrap().is_empty());
        drop((node, old));
        assert!(matches!(
            migrate_single_srs(dir.path()),
            Err(MigrateError::AlreadySplit(_))
        ));
    }
}

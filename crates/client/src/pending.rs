//! Node operations an owner still owes: kfrag shares a node did not take
//! and revocations a node did not hear, kept in `pending-nodes.toml` in the
//! profile (0600: a share is half of nothing, but it is nobody's business)
//! and retried, in order per node, before every later grant, revocation or
//! rotation (and by `sesphr retry`).
//!
//! Two rules keep a retry from undoing a later decision: a revocation drops
//! every share still owed for that grant (it is never delivered after the
//! revoke), and operations for one node are replayed in the order they were
//! owed, so "delete, then the new grant's share" stays in that order.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sesphr_mesh::pki::write_secret;

use crate::ClientError;

/// What a node is owed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owed {
    /// Store this share (hex fields as sent).
    Put {
        /// The partition key epoch.
        epoch: u32,
        /// Hex of the delegating key.
        delegating_public_key: String,
        /// Hex of the node's share.
        kfrag: String,
    },
    /// Delete every share of the grant (revocation).
    Delete,
}

/// One owed operation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PendingOp {
    /// The node's index.
    pub node: u8,
    /// The grant's partition.
    pub partition: String,
    /// The grant's grantee.
    pub grantee_id: String,
    /// Since when (Unix seconds).
    pub since: i64,
    /// What is owed.
    #[serde(flatten)]
    pub owed: Owed,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct PendingFile {
    #[serde(default)]
    ops: Vec<PendingOp>,
}

/// The profile's list of owed node operations.
pub(crate) struct Pending {
    path: PathBuf,
}

impl Pending {
    pub(crate) fn new(home: &Path) -> Self {
        Pending {
            path: home.join("pending-nodes.toml"),
        }
    }

    pub(crate) fn load(&self) -> Result<Vec<PendingOp>, ClientError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => toml::from_str::<PendingFile>(&text)
                .map(|f| f.ops)
                .map_err(|e| ClientError::Profile(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ClientError::io(&self.path, e)),
        }
    }

    pub(crate) fn save(&self, ops: Vec<PendingOp>) -> Result<(), ClientError> {
        if ops.is_empty() && !self.path.exists() {
            return Ok(());
        }
        let text = toml::to_string(&PendingFile { ops }).expect("pending ops serialize");
        write_secret(&self.path, text.as_bytes())?;
        Ok(())
    }

    /// Appends operations owed.
    pub(crate) fn add(&self, more: Vec<PendingOp>) -> Result<(), ClientError> {
        if more.is_empty() {
            return Ok(());
        }
        let mut ops = self.load()?;
        ops.extend(more);
        self.save(ops)
    }

    /// Forgets every share still owed for `(partition, grantee)`: written
    /// before a revocation is sent anywhere.
    pub(crate) fn drop_puts(&self, partition: &str, grantee_id: &str) -> Result<(), ClientError> {
        let mut ops = self.load()?;
        let before = ops.len();
        ops.retain(|op| {
            !(op.partition == partition
                && op.grantee_id == grantee_id
                && matches!(op.owed, Owed::Put { .. }))
        });
        if ops.len() != before {
            self.save(ops)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(node: u8, grantee: &str, owed: Owed) -> PendingOp {
        PendingOp {
            node,
            partition: "medical".into(),
            grantee_id: grantee.into(),
            since: 1,
            owed,
        }
    }

    #[test]
    fn a_revocation_drops_owed_shares_of_that_grant_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pending::new(dir.path());
        assert!(p.load().unwrap().is_empty());
        let put = Owed::Put {
            epoch: 0,
            delegating_public_key: "02".into(),
            kfrag: "aa".into(),
        };
        p.add(vec![
            op(1, "bob", put.clone()),
            op(2, "carol", put.clone()),
            op(3, "bob", Owed::Delete),
        ])
        .unwrap();
        p.drop_puts("medical", "bob").unwrap();
        let left = p.load().unwrap();
        assert_eq!(left, vec![op(2, "carol", put), op(3, "bob", Owed::Delete)]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pending-nodes.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

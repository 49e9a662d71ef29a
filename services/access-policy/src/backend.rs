//! The storage operations the policy logic ([`crate::Policy`]) needs, as a
//! trait, so another backend (PostgreSQL) can stand in for the sled
//! [`PolicyStore`] without the rules changing.
//!
//! A backend owns what must be atomic with the data: a grant change and
//! its audit entry commit together, a check reads the grant under the same
//! lock grant changes commit under (so the log order is the decision
//! order), and refusals are coalesced (see [`crate::coalesce`]) where they
//! are appended. [`conformance`] is the behaviour every backend must show.

use sesphr_tlog::{Cosignature, Hash, SignedCheckpoint, SigningKey};

use crate::{
    AuditEntry, AuditEvent, AuditFilter, AuditReport, CheckQuery, Decision, DomainError, Grant,
    OwnerAuditReport, PolicyStore,
};

/// Grants and the hash-chained audit log. `now` is unix seconds, passed in
/// so every rule is testable; `actor` names who is audited as acting.
pub trait PolicyBackend: Send + Sync + 'static {
    /// Creates or replaces the grant for (owner, partition, grantee) and
    /// audits it as `grant`; returns it with `granted_at = now`.
    fn grant(&self, grant: Grant, actor: &str, now: i64) -> Result<Grant, DomainError>;

    /// Removes the grant and audits it as `revoke`; `Unknown` if none.
    fn revoke(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        actor: &str,
        now: i64,
    ) -> Result<Grant, DomainError>;

    /// Decides and audits one access question (see the crate docs).
    fn check(&self, q: &CheckQuery, actor: &str, now: i64) -> Result<Decision, DomainError>;

    /// Every grant `owner_id` has given, by partition then grantee.
    fn grants_given(&self, owner_id: &str) -> Result<Vec<Grant>, DomainError>;

    /// Every grant naming `grantee_id`, by owner then partition.
    fn grants_received(&self, grantee_id: &str) -> Result<Vec<Grant>, DomainError>;

    /// Appends an event; `None` when a refusal over budget was counted into
    /// a coalesced entry instead.
    fn record_event(&self, event: AuditEvent, now: i64) -> Result<Option<AuditEntry>, DomainError>;

    /// Audits that `reader` listed `returned` entries of `owner`'s view
    /// (`None` = the whole log), within the read budget.
    fn record_audit_listing(
        &self,
        reader: &str,
        owner: Option<&str>,
        after_seq: u64,
        returned: usize,
        now: i64,
    ) -> Result<(), DomainError>;

    /// A page of the log; see [`AuditFilter`].
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, DomainError>;

    /// Signs a checkpoint over every durable entry, unless the newest one
    /// covers them all (see [`crate::tlog`]).
    fn publish_checkpoint(
        &self,
        key: &SigningKey,
        origin: &str,
        now: i64,
    ) -> Result<Option<SignedCheckpoint>, DomainError>;

    /// The newest checkpoint with at least `min` cosignatures.
    fn witnessed_checkpoint(
        &self,
        min: usize,
    ) -> Result<Option<(SignedCheckpoint, Vec<Cosignature>)>, DomainError>;

    /// Audit paths of leaves in the tree of a published checkpoint.
    fn inclusion_proofs(
        &self,
        tree_size: u64,
        leaves: &[u64],
    ) -> Result<Vec<Vec<Hash>>, DomainError>;

    /// Proof that the tree of `first` leaves is a prefix of the published
    /// tree of `second` leaves.
    fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, DomainError>;

    /// Stores a witness's cosignature of a published checkpoint.
    fn add_cosignature(
        &self,
        witness: &str,
        body: &str,
        cosignature: &Cosignature,
    ) -> Result<(), DomainError>;

    /// Disables or enables a user, audited; (changed, version after).
    fn set_user_status(
        &self,
        user_id: &str,
        disabled: bool,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError>;

    /// Revokes one device of a user until `until`, audited; (changed,
    /// version after).
    fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError>;

    /// The deny list: its version and every entry.
    fn deny_list(&self) -> Result<(u64, sesphr_mesh::deny::DenyEntries), DomainError>;

    /// Recomputes the whole chain, optionally against a published head.
    fn verify_audit(
        &self,
        expected_head: Option<(u64, [u8; 32])>,
    ) -> Result<AuditReport, DomainError>;

    /// The same walk, answered for one owner about her own entries only.
    fn verify_audit_for(
        &self,
        owner_id: &str,
        expected_own: Option<(u64, [u8; 32])>,
    ) -> Result<OwnerAuditReport, DomainError>;

    /// Appends the coalesced refusal and read entries that are due (see
    /// [`crate::coalesce`]); the server calls it about once per
    /// [`crate::coalesce::FLUSH_INTERVAL`]. Returns how many were appended.
    fn flush_coalesced(&self, now: i64) -> Result<usize, DomainError>;

    /// Appends every pending coalesced entry, due or not (at shutdown, so
    /// no count is lost with the process).
    fn flush_all_coalesced(&self, now: i64) -> Result<usize, DomainError>;
}

impl PolicyBackend for PolicyStore {
    fn set_user_status(
        &self,
        user_id: &str,
        disabled: bool,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        PolicyStore::set_user_status(self, user_id, disabled, reason, actor, now)
    }

    fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        PolicyStore::revoke_device(self, user_id, device, until, reason, actor, now)
    }

    fn deny_list(&self) -> Result<(u64, sesphr_mesh::deny::DenyEntries), DomainError> {
        PolicyStore::deny_list(self)
    }

    fn grant(&self, grant: Grant, actor: &str, now: i64) -> Result<Grant, DomainError> {
        PolicyStore::grant(self, grant, actor, now)
    }

    fn revoke(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        actor: &str,
        now: i64,
    ) -> Result<Grant, DomainError> {
        PolicyStore::revoke(self, owner_id, partition, grantee_id, actor, now)
    }

    fn check(&self, q: &CheckQuery, actor: &str, now: i64) -> Result<Decision, DomainError> {
        PolicyStore::check(self, q, actor, now)
    }

    fn grants_given(&self, owner_id: &str) -> Result<Vec<Grant>, DomainError> {
        PolicyStore::grants_given(self, owner_id)
    }

    fn grants_received(&self, grantee_id: &str) -> Result<Vec<Grant>, DomainError> {
        PolicyStore::grants_received(self, grantee_id)
    }

    fn record_event(&self, event: AuditEvent, now: i64) -> Result<Option<AuditEntry>, DomainError> {
        PolicyStore::record_event(self, event, now)
    }

    fn record_audit_listing(
        &self,
        reader: &str,
        owner: Option<&str>,
        after_seq: u64,
        returned: usize,
        now: i64,
    ) -> Result<(), DomainError> {
        PolicyStore::record_audit_listing(self, reader, owner, after_seq, returned, now)
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, DomainError> {
        PolicyStore::audit(self, filter)
    }

    fn publish_checkpoint(
        &self,
        key: &SigningKey,
        origin: &str,
        now: i64,
    ) -> Result<Option<SignedCheckpoint>, DomainError> {
        PolicyStore::publish_checkpoint(self, key, origin, now)
    }

    fn witnessed_checkpoint(
        &self,
        min: usize,
    ) -> Result<Option<(SignedCheckpoint, Vec<Cosignature>)>, DomainError> {
        PolicyStore::witnessed_checkpoint(self, min)
    }

    fn inclusion_proofs(
        &self,
        tree_size: u64,
        leaves: &[u64],
    ) -> Result<Vec<Vec<Hash>>, DomainError> {
        PolicyStore::inclusion_proofs(self, tree_size, leaves)
    }

    fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, DomainError> {
        PolicyStore::consistency_proof(self, first, second)
    }

    fn add_cosignature(
        &self,
        witness: &str,
        body: &str,
        cosignature: &Cosignature,
    ) -> Result<(), DomainError> {
        PolicyStore::add_cosignature(self, witness, body, cosignature)
    }

    fn verify_audit(
        &self,
        expected_head: Option<(u64, [u8; 32])>,
    ) -> Result<AuditReport, DomainError> {
        PolicyStore::verify_audit(self, expected_head)
    }

    fn verify_audit_for(
        &self,
        owner_id: &str,
        expected_own: Option<(u64, [u8; 32])>,
    ) -> Result<OwnerAuditReport, DomainError> {
        PolicyStore::verify_audit_for(self, owner_id, expected_own)
    }

    fn flush_coalesced(&self, now: i64) -> Result<usize, DomainError> {
        PolicyStore::flush_coalesced(self, now)
    }

    fn flush_all_coalesced(&self, now: i64) -> Result<usize, DomainError> {
        PolicyStore::flush_all_coalesced(self, now)
    }
}

/// The behaviour every [`PolicyBackend`] must show, run against a fresh,
/// empty backend. Panics (it is a test) at the first difference.
#[cfg(test)]
pub fn conformance(b: &dyn PolicyBackend) {
    use sesphr::rpc::Rpc;
    use sesphr_identity::Role;

    use crate::{Action, AuditAction, GENESIS_HASH, Outcome};

    const T0: i64 = 1_700_000_000;
    let grant = Grant {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: "bob".into(),
        grantee_role: Role::Doctor,
        epoch_min: 1,
        epoch_max: Some(3),
        not_before: T0,
        expires_at: Some(T0 + 100),
        granted_at: 0,
    };
    let query = |epoch| CheckQuery {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: "bob".into(),
        grantee_role: Role::Doctor,
        epoch,
        record_created_at: None,
        record_id: None,
        action: Action::Read,
    };

    // An empty log verifies, at the genesis head.
    let r = b.verify_audit(None).unwrap();
    assert!(
        r.ok && r.entries == 0 && r.head_hash == GENESIS_HASH,
        "{r:?}"
    );

    // Grants: stored with granted_at, visible from both sides.
    let stored = b.grant(grant.clone(), "patient/alice", T0 + 1).unwrap();
    assert_eq!(stored.granted_at, T0 + 1);
    assert_eq!(
        b.grants_given("alice").unwrap(),
        std::slice::from_ref(&stored)
    );
    assert_eq!(
        b.grants_received("bob").unwrap(),
        std::slice::from_ref(&stored)
    );
    assert!(b.grants_given("bob").unwrap().is_empty());
    assert!(matches!(
        b.grant(
            Grant {
                grantee_id: "alice".into(),
                ..grant.clone()
            },
            "patient/alice",
            T0
        ),
        Err(DomainError::Malformed(_))
    ));

    // Checks follow the rule and are audited.
    let yes = b.check(&query(2), "service/srs", T0 + 2).unwrap();
    assert!(yes.allowed, "{yes:?}");
    assert_eq!(yes.grant.as_ref(), Some(&stored));
    let no = b.check(&query(4), "service/srs", T0 + 3).unwrap();
    assert!(!no.allowed);
    assert_eq!(no.caller_reason, "the grant does not cover it");

    // Events from elsewhere; a listing; revocation.
    let ev = AuditEvent {
        actor: "service/cloud-storage".into(),
        action: AuditAction::Served(Rpc::GetRecord),
        owner_id: "alice".into(),
        partition: "medical".into(),
        subject: "practitioner/doctor/bob".into(),
        record_id: String::new(),
        outcome: Outcome::Ok,
        detail: "read".into(),
    };
    let e = b.record_event(ev, T0 + 4).unwrap().unwrap();
    assert_eq!(e.action, "sesphr.v1.CloudStorage/GetRecord");
    assert_eq!(e.computed_hash(), e.hash);
    b.record_audit_listing("operator/ops", None, 0, 4, T0 + 5)
        .unwrap();
    let removed = b
        .revoke("alice", "medical", "bob", "patient/alice", T0 + 6)
        .unwrap();
    assert_eq!(removed, stored);
    assert!(matches!(
        b.revoke("alice", "medical", "bob", "patient/alice", T0 + 7),
        Err(DomainError::Unknown(_))
    ));
    assert!(!b.check(&query(2), "service/srs", T0 + 8).unwrap().allowed);

    // The log, in order, with today's words, and per-owner views.
    let log = b.audit(&AuditFilter::default()).unwrap();
    let words: Vec<_> = log
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        words,
        [
            ("grant", "ok"),
            ("check:read", "allowed"),
            ("check:read", "denied"),
            ("sesphr.v1.CloudStorage/GetRecord", "ok"),
            ("list_audit", "ok"),
            ("revoke", "ok"),
            ("check:read", "denied"),
        ]
    );
    assert!(log.iter().zip(1..).all(|(e, seq)| e.seq == seq));
    let alices = b
        .audit(&AuditFilter {
            owner_id: Some("alice".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(alices.len(), 6, "the listing names no owner");
    let page = b
        .audit(&AuditFilter {
            after_seq: 5,
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);

    // Verification, global and per owner, against published heads.
    let head = (log[6].seq, log[6].hash);
    let r = b.verify_audit(Some(head)).unwrap();
    assert!(r.ok && r.entries == 7 && r.head_seq == 7, "{r:?}");
    assert!(!b.verify_audit(Some((7, [1; 32]))).unwrap().ok);
    assert!(!b.verify_audit(Some((8, head.1))).unwrap().ok);
    let own = b.verify_audit_for("alice", Some(head)).unwrap();
    assert!(own.ok && own.entries == 6 && own.head_seq == 7, "{own:?}");
    let theirs = b.verify_audit_for("bob", Some(head)).unwrap();
    assert!(!theirs.ok && theirs.entries == 0, "{theirs:?}");

    // The transparency log: a checkpoint over every entry, whose root is the
    // RFC 9162 tree of the entries' leaf data; proofs at published sizes;
    // one cosignature per witness and checkpoint.
    let key = SigningKey::from_hex(&"33".repeat(32)).unwrap();
    assert!(b.witnessed_checkpoint(0).unwrap().is_none());
    let cp = b
        .publish_checkpoint(&key, "test/audit", T0)
        .unwrap()
        .expect("the log grew");
    key.public_key().verify_checkpoint(&cp).unwrap();
    let mut tree = sesphr_tlog::merkle::MemoryTree::new();
    for e in &log {
        tree.push(&e.leaf_data());
    }
    assert_eq!((cp.checkpoint.size, cp.checkpoint.root), (7, tree.root()));
    assert!(
        b.publish_checkpoint(&key, "test/audit", T0)
            .unwrap()
            .is_none()
    );
    let leaves: Vec<u64> = log.iter().map(|e| e.leaf_index()).collect();
    for (e, path) in log.iter().zip(b.inclusion_proofs(7, &leaves).unwrap()) {
        let leaf = sesphr_tlog::merkle::leaf_hash(&e.leaf_data());
        sesphr_tlog::merkle::verify_inclusion(e.leaf_index(), 7, &leaf, &path, &tree.root())
            .unwrap();
    }
    assert!(matches!(
        b.inclusion_proofs(6, &[0]),
        Err(DomainError::Unknown(_))
    ));
    let cosig = key.cosign("srs-node-1", T0, &cp.checkpoint);
    b.add_cosignature("srs-node-1", &cp.checkpoint.body(), &cosig)
        .unwrap();
    assert!(
        b.add_cosignature("cloud-storage", &cp.checkpoint.body(), &cosig)
            .is_err()
    );
    let (witnessed, cosigs) = b.witnessed_checkpoint(1).unwrap().unwrap();
    assert_eq!((witnessed, cosigs), (cp.clone(), vec![cosig]));
    b.record_event(
        AuditEvent {
            actor: "service/srs".into(),
            action: AuditAction::Served(Rpc::GetUser),
            owner_id: String::new(),
            partition: String::new(),
            subject: String::new(),
            record_id: String::new(),
            outcome: Outcome::Ok,
            detail: "one more".into(),
        },
        T0,
    )
    .unwrap();
    let cp2 = b
        .publish_checkpoint(&key, "test/audit", T0)
        .unwrap()
        .unwrap();
    let proof = b.consistency_proof(7, cp2.checkpoint.size).unwrap();
    sesphr_tlog::check_advance(&cp.checkpoint, &cp2.checkpoint, &proof).unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn sled_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::PolicyStore::open(dir.path()).unwrap();
        super::conformance(&store);
    }
}

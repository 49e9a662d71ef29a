//! The rules of AccessPolicy per request: who may grant, check, read and
//! verify the audit log or record events, and what each caller is shown.
//!
//! Every method takes the typed [`Caller`] the mesh's authorization layer
//! established and domain types already decoded, so the gRPC adapter only
//! converts; the RPC table decides who may call an RPC at all, these rules
//! what the call may do (and hold on their own should the table change).

use std::sync::Arc;
use std::time::Duration;

use sesphr_identity::{Caller, PartitionName, Role, UserId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::PolicyBackend;
use crate::{
    AuditAction, AuditEntry, AuditEvent, AuditFilter, AuditReport, CheckQuery, Decision,
    DomainError, Grant, Outcome,
};

/// Audit verifications that may run at once in this process: each walks
/// the whole chain, so more would only share the CPU with everyone else.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 1;
/// How long a verification waits for a running one to finish before it is
/// refused as [`DomainError::UsedUp`].
pub const VERIFY_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Longest `action`, `owner_id`, `partition`, `subject`, `record_id` and
/// `outcome` another service may send in an event.
pub const MAX_EVENT_FIELD_LEN: usize = 256;
/// Longest `detail` another service may send.
pub const MAX_EVENT_DETAIL_LEN: usize = 4096;

/// A grant as a patient asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// The owner the request names, as sent: empty means the caller. Kept
    /// as text so naming anyone else, valid id or not, is a refusal.
    pub owner_id: String,
    pub partition: PartitionName,
    pub grantee_id: UserId,
    pub grantee_role: Role,
    pub epoch_min: u32,
    pub epoch_max: Option<u32>,
    pub not_before: i64,
    pub expires_at: Option<i64>,
}

/// An access question as a service relays it; the grantee is the user
/// the service authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub owner_id: UserId,
    pub partition: PartitionName,
    pub grantee_id: UserId,
    pub grantee_role: Role,
    pub epoch: u32,
    pub record_created_at: Option<i64>,
    pub record_id: Option<sesphr_identity::RecordId>,
    pub action: crate::Action,
}

/// An event another service observed, as it was sent: every field is
/// checked and the words parsed here, so nothing unknown enters the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedEvent {
    pub action: String,
    pub owner_id: String,
    pub partition: String,
    pub subject: String,
    pub record_id: String,
    pub outcome: String,
    pub detail: String,
}

/// The grants a user gives (patients only) and receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserGrants {
    pub given: Vec<Grant>,
    pub received: Vec<Grant>,
}

/// Whose view of the log a caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Everything,
    Owner(UserId),
}

fn audit_scope(caller: &Caller) -> Result<Scope, DomainError> {
    match caller {
        Caller::Operator(_) => Ok(Scope::Everything),
        Caller::Patient(owner) => Ok(Scope::Owner(owner.clone())),
        other => Err(DomainError::NotEntitled(format!(
            "{other} may not read the audit log: only patients (their own entries) \
             and operators do"
        ))),
    }
}

fn patient(caller: &Caller, what: &str) -> Result<UserId, DomainError> {
    match caller {
        Caller::Patient(owner) => Ok(owner.clone()),
        other => Err(DomainError::NotEntitled(format!(
            "only patients {what}, not {other}"
        ))),
    }
}

fn service(caller: &Caller, what: &str) -> Result<(), DomainError> {
    match caller {
        Caller::Service(_) | Caller::SrsNode(_) => Ok(()),
        other => Err(DomainError::NotEntitled(format!(
            "only mesh services {what}, not {other}"
        ))),
    }
}

/// `VerifyAudit`'s optional published head: both parts or neither.
pub fn expected_head(seq: u64, hash: &[u8]) -> Result<Option<(u64, [u8; 32])>, DomainError> {
    match (seq, <[u8; 32]>::try_from(hash)) {
        (0, _) if hash.is_empty() => Ok(None),
        (seq, Ok(h)) if seq > 0 => Ok(Some((seq, h))),
        _ => Err(DomainError::Malformed(
            "expected_seq and expected_hash (32 bytes) go together".into(),
        )),
    }
}

/// AccessPolicy's request rules over a [`PolicyBackend`].
pub struct Policy<S: ?Sized> {
    store: Arc<S>,
    verifications: Arc<Semaphore>,
    verify_wait: Duration,
}

impl<S: PolicyBackend + ?Sized> Policy<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self::with_verify_wait(store, VERIFY_QUEUE_WAIT)
    }

    /// [`Policy::new`] with another wait for a verification slot.
    pub fn with_verify_wait(store: Arc<S>, verify_wait: Duration) -> Self {
        Policy {
            store,
            verifications: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
            verify_wait,
        }
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// A patient grants access to her own partition, to an enrolled user
    /// under the role it enrolled with (`enrolled_role`, from the user
    /// directory; `None`: nobody holds the id); naming another owner is
    /// refused.
    pub fn grant(
        &self,
        caller: &Caller,
        req: GrantRequest,
        enrolled_role: Option<Role>,
        now: i64,
    ) -> Result<Grant, DomainError> {
        let owner = patient(caller, "grant access to their records")?;
        if !req.owner_id.is_empty() && req.owner_id != owner.as_str() {
            return Err(DomainError::NotEntitled(format!(
                "patient {owner} may only grant access to its own records, not {:?}'s",
                req.owner_id
            )));
        }
        match enrolled_role {
            None => {
                return Err(DomainError::Conflict(format!(
                    "{} is not enrolled: grants go to enrolled users only",
                    req.grantee_id
                )));
            }
            Some(role) if role != req.grantee_role => {
                return Err(DomainError::Conflict(format!(
                    "{} is enrolled as {role}, not {}: grant it as {role}",
                    req.grantee_id, req.grantee_role
                )));
            }
            Some(_) => {}
        }
        let grant = Grant {
            owner_id: owner.into_string(),
            partition: req.partition.into_string(),
            grantee_id: req.grantee_id.into_string(),
            grantee_role: req.grantee_role,
            epoch_min: req.epoch_min,
            epoch_max: req.epoch_max,
            not_before: req.not_before,
            expires_at: req.expires_at,
            granted_at: 0,
        };
        self.store.grant(grant, &caller.to_string(), now)
    }

    /// An operator disables (or enables) a user; (changed, version).
    pub fn set_user_status(
        &self,
        caller: &Caller,
        user_id: &UserId,
        disabled: bool,
        reason: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        let Caller::Operator(_) = caller else {
            return Err(DomainError::NotEntitled(format!(
                "only operators disable or enable users, not {caller}"
            )));
        };
        self.store
            .set_user_status(user_id, disabled, reason, &caller.to_string(), now)
    }

    /// The setup service revokes a device its user removed.
    pub fn revoke_device(
        &self,
        caller: &Caller,
        user_id: &UserId,
        device: &str,
        until: i64,
        reason: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        if !matches!(caller, Caller::Service(sesphr_identity::Service::Srs)) {
            return Err(DomainError::NotEntitled(format!(
                "only the setup service revokes devices, not {caller}"
            )));
        }
        self.store
            .revoke_device(user_id, device, until, reason, &caller.to_string(), now)
    }

    /// Whether `caller` may read the deny list (the services that
    /// enforce it).
    pub fn may_read_deny_list(&self, caller: &Caller) -> Result<(), DomainError> {
        service(caller, "read the deny list")
    }

    /// A patient revokes a grant she gave.
    pub fn revoke(
        &self,
        caller: &Caller,
        partition: &PartitionName,
        grantee_id: &UserId,
        now: i64,
    ) -> Result<Grant, DomainError> {
        let owner = patient(caller, "revoke grants")?;
        self.store
            .revoke(&owner, partition, grantee_id, &caller.to_string(), now)
    }

    /// A service asks whether the user it authenticated may act.
    pub fn check(
        &self,
        caller: &Caller,
        req: CheckRequest,
        now: i64,
    ) -> Result<Decision, DomainError> {
        service(caller, "ask for access checks")?;
        let query = CheckQuery {
            owner_id: req.owner_id.into_string(),
            partition: req.partition.into_string(),
            grantee_id: req.grantee_id.into_string(),
            grantee_role: req.grantee_role,
            epoch: req.epoch,
            record_created_at: req.record_created_at,
            record_id: req.record_id.map(|r| r.into_string()),
            action: req.action,
        };
        self.store.check(&query, &caller.to_string(), now)
    }

    /// A user's grants: those she gave (patients own records, so only they
    /// give any) and those she received.
    pub fn list_grants(&self, caller: &Caller) -> Result<UserGrants, DomainError> {
        let (role, id) = caller
            .as_user()
            .ok_or_else(|| DomainError::NotEntitled("only users have grants".into()))?;
        let given = if role == Role::Patient {
            self.store.grants_given(id)?
        } else {
            Vec::new()
        };
        Ok(UserGrants {
            given,
            received: self.store.grants_received(id)?,
        })
    }

    /// A page of the audit log after `after_seq` (`limit` 0 = the default
    /// page): operators see everything, a patient only entries about her
    /// records. The listing is itself audited, best effort: a log that
    /// refuses appends must stay readable.
    pub fn list_audit(
        &self,
        caller: &Caller,
        after_seq: u64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<AuditEntry>, DomainError> {
        let filter = AuditFilter {
            owner_id: match audit_scope(caller)? {
                Scope::Everything => None,
                Scope::Owner(owner) => Some(owner.into_string()),
            },
            after_seq,
            limit,
        };
        let entries = self.store.audit(&filter)?;
        let reader = caller.to_string();
        if let Err(e) = self.store.record_audit_listing(
            &reader,
            filter.owner_id.as_deref(),
            filter.after_seq,
            entries.len(),
            now,
        ) {
            tracing::warn!(error = %e, %reader, "could not audit an audit listing");
        }
        Ok(entries)
    }

    /// Admits one verification of the log (against `expected`, a head the
    /// caller was shown earlier): operators verify the whole log, a patient
    /// her own view. Only [`MAX_CONCURRENT_VERIFICATIONS`] run at once; a
    /// caller that cannot get a slot within the wait is refused. Run the
    /// returned job where blocking is fine.
    pub async fn verify_audit(
        &self,
        caller: &Caller,
        expected: Option<(u64, [u8; 32])>,
    ) -> Result<Verification<S>, DomainError> {
        let scope = audit_scope(caller)?;
        let permit =
            tokio::time::timeout(self.verify_wait, self.verifications.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| {
                    tracing::warn!(%caller, "audit verification refused: one is already running");
                    DomainError::UsedUp(format!(
                        "another audit verification is running and did not finish within {} s; \
                 retry later",
                        self.verify_wait.as_secs()
                    ))
                })?;
        Ok(Verification {
            store: self.store.clone(),
            scope,
            expected,
            _permit: permit,
        })
    }

    /// Appends an event another service observed, attributed to it.
    /// Returns the entry's seq, or `None` when a refusal over its
    /// identity's budget was counted into a coalesced entry written later.
    pub fn record_event(
        &self,
        caller: &Caller,
        ev: ObservedEvent,
        now: i64,
    ) -> Result<Option<u64>, DomainError> {
        service(caller, "record audit events")?;
        for (name, value) in [
            ("action", &ev.action),
            ("owner_id", &ev.owner_id),
            ("partition", &ev.partition),
            ("subject", &ev.subject),
            ("record_id", &ev.record_id),
            ("outcome", &ev.outcome),
        ] {
            if value.len() > MAX_EVENT_FIELD_LEN {
                return Err(DomainError::Malformed(format!(
                    "{name} is longer than {MAX_EVENT_FIELD_LEN} bytes"
                )));
            }
        }
        if ev.action.is_empty() {
            return Err(DomainError::Malformed("action is required".into()));
        }
        if ev.detail.len() > MAX_EVENT_DETAIL_LEN {
            return Err(DomainError::Malformed(format!(
                "detail is longer than {MAX_EVENT_DETAIL_LEN} bytes"
            )));
        }
        let event = AuditEvent {
            actor: caller.to_string(),
            action: ev.action.parse()?,
            owner_id: ev.owner_id,
            partition: ev.partition,
            subject: ev.subject,
            record_id: ev.record_id,
            outcome: ev.outcome.parse()?,
            detail: ev.detail,
        };
        Ok(self.store.record_event(event, now)?.map(|e| e.seq))
    }
}

/// Records that the RPC table refused `actor` a call of the RPC whose row
/// is named `rpc` (AccessPolicy's own refusals, written directly to its
/// log rather than through `RecordEvent`).
pub fn record_refusal<S: PolicyBackend + ?Sized>(
    store: &S,
    actor: String,
    rpc: &str,
    message: String,
    now: i64,
) -> Result<(), DomainError> {
    let action = AuditAction::denied_rpc(rpc)
        .ok_or_else(|| DomainError::Malformed(format!("{rpc:?} is not a row of the RPC table")))?;
    let event = AuditEvent {
        actor,
        action,
        owner_id: String::new(),
        partition: String::new(),
        subject: String::new(),
        record_id: String::new(),
        outcome: Outcome::Denied,
        detail: message,
    };
    store.record_event(event, now).map(drop)
}

/// An admitted verification; holds its slot until it has run, so a caller
/// that goes away does not free the slot while the walk still runs.
pub struct Verification<S: ?Sized> {
    store: Arc<S>,
    scope: Scope,
    expected: Option<(u64, [u8; 32])>,
    _permit: OwnedSemaphorePermit,
}

impl<S: PolicyBackend + ?Sized> Verification<S> {
    /// Walks the log (blocking: it reads every entry). A patient's report
    /// counts her own entries and never says where another user's entry
    /// failed (`first_bad_seq` is `None`).
    pub fn run(self) -> Result<AuditReport, DomainError> {
        Ok(match &self.scope {
            Scope::Everything => self.store.verify_audit(self.expected)?,
            Scope::Owner(owner) => {
                let r = self.store.verify_audit_for(owner, self.expected)?;
                AuditReport {
                    ok: r.ok,
                    entries: r.entries,
                    head_seq: r.head_seq,
                    head_hash: r.head_hash,
                    first_bad_seq: None,
                    problem: r.problem,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use sesphr::rpc::Rpc;
    use sesphr_identity::Service;

    use super::*;
    use crate::{Action, PolicyStore};

    const T0: i64 = 1_700_000_000;

    fn policy() -> (tempfile::TempDir, Policy<PolicyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).unwrap();
        (dir, Policy::new(Arc::new(store)))
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn alice() -> Caller {
        Caller::Patient(user("alice"))
    }

    fn doctor_bob() -> Caller {
        Caller::Practitioner {
            role: Role::Doctor,
            id: user("bob"),
        }
    }

    fn srs() -> Caller {
        Caller::Service(Service::Srs)
    }

    fn ops() -> Caller {
        Caller::Operator(user("ops"))
    }

    /// bob's role in the user directory.
    const BOB_ENROLLED: Option<Role> = Some(Role::Doctor);

    #[test]
    fn grants_go_to_enrolled_users_under_their_role() {
        let (_d, p) = policy();
        let ghost = p.grant(&alice(), grant_to_bob(""), None, T0).unwrap_err();
        assert!(
            matches!(&ghost, DomainError::Conflict(m) if m.contains("is not enrolled")),
            "{ghost:?}"
        );
        let wrong = p
            .grant(&alice(), grant_to_bob(""), Some(Role::Friend), T0)
            .unwrap_err();
        assert!(
            matches!(&wrong, DomainError::Conflict(m) if m.contains("enrolled as friend")),
            "{wrong:?}"
        );
        assert!(p.store().grants_given("alice").unwrap().is_empty());
    }

    fn grant_to_bob(owner_id: &str) -> GrantRequest {
        GrantRequest {
            owner_id: owner_id.into(),
            partition: PartitionName::parse("medical").unwrap(),
            grantee_id: user("bob"),
            grantee_role: Role::Doctor,
            epoch_min: 0,
            epoch_max: None,
            not_before: T0,
            expires_at: None,
        }
    }

    fn bob_reads(owner: &str) -> CheckRequest {
        CheckRequest {
            owner_id: user(owner),
            partition: PartitionName::parse("medical").unwrap(),
            grantee_id: user("bob"),
            grantee_role: Role::Doctor,
            epoch: 1,
            record_created_at: None,
            record_id: None,
            action: Action::Read,
        }
    }

    fn not_entitled(r: Result<impl std::fmt::Debug, DomainError>, says: &str) {
        match r {
            Err(DomainError::NotEntitled(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected NotEntitled({says:?}), got {other:?}"),
        }
    }

    fn malformed(r: Result<impl std::fmt::Debug, DomainError>, says: &str) {
        match r {
            Err(DomainError::Malformed(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected Malformed({says:?}), got {other:?}"),
        }
    }

    fn log(p: &Policy<PolicyStore>) -> Vec<AuditEntry> {
        p.store().audit(&AuditFilter::default()).unwrap()
    }

    #[test]
    fn only_the_owner_grants_and_revokes() {
        let (_d, p) = policy();
        let g = p
            .grant(&alice(), grant_to_bob(""), BOB_ENROLLED, T0)
            .unwrap();
        assert_eq!((g.owner_id.as_str(), g.granted_at), ("alice", T0));
        p.grant(&alice(), grant_to_bob("alice"), BOB_ENROLLED, T0)
            .unwrap();
        for other in ["carol", "Not An Id"] {
            not_entitled(
                p.grant(&alice(), grant_to_bob(other), BOB_ENROLLED, T0),
                "patient alice may only grant access to its own records",
            );
        }
        for caller in [doctor_bob(), srs(), ops(), Caller::Anonymous] {
            not_entitled(
                p.grant(&caller, grant_to_bob("alice"), BOB_ENROLLED, T0),
                "only patients",
            );
        }
        let medical = PartitionName::parse("medical").unwrap();
        not_entitled(
            p.revoke(&doctor_bob(), &medical, &user("bob"), T0),
            "only patients revoke grants",
        );
        // Another patient revokes in her own name only: alice's grant stays.
        let carol = Caller::Patient(user("carol"));
        assert!(matches!(
            p.revoke(&carol, &medical, &user("bob"), T0),
            Err(DomainError::Unknown(_))
        ));
        p.revoke(&alice(), &medical, &user("bob"), T0 + 1).unwrap();
        let actors: Vec<_> = log(&p).into_iter().map(|e| (e.actor, e.action)).collect();
        assert_eq!(
            actors,
            [
                ("patient/alice".to_owned(), "grant".to_owned()),
                ("patient/alice".to_owned(), "grant".to_owned()),
                ("patient/alice".to_owned(), "revoke".to_owned()),
            ]
        );
    }

    #[test]
    fn only_services_ask_checks_and_are_named_in_the_log() {
        let (_d, p) = policy();
        p.grant(&alice(), grant_to_bob(""), BOB_ENROLLED, T0)
            .unwrap();
        assert!(p.check(&srs(), bob_reads("alice"), T0 + 1).unwrap().allowed);
        assert!(!p.check(&srs(), bob_reads("carol"), T0 + 1).unwrap().allowed);
        for caller in [alice(), doctor_bob(), ops()] {
            not_entitled(
                p.check(&caller, bob_reads("alice"), T0),
                "only mesh services",
            );
        }
        let checks: Vec<_> = log(&p)
            .into_iter()
            .filter(|e| e.action == "check:read")
            .map(|e| (e.actor, e.outcome))
            .collect();
        assert_eq!(
            checks,
            [
                ("service/srs".to_owned(), "allowed".to_owned()),
                ("service/srs".to_owned(), "denied".to_owned()),
            ]
        );
    }

    #[test]
    fn patients_see_grants_given_and_practitioners_only_received() {
        let (_d, p) = policy();
        p.grant(&alice(), grant_to_bob(""), BOB_ENROLLED, T0)
            .unwrap();
        let mine = p.list_grants(&alice()).unwrap();
        assert_eq!((mine.given.len(), mine.received.len()), (1, 0));
        let bobs = p.list_grants(&doctor_bob()).unwrap();
        assert_eq!((bobs.given.len(), bobs.received.len()), (0, 1));
        for caller in [srs(), ops(), Caller::Anonymous] {
            not_entitled(p.list_grants(&caller), "only users have grants");
        }
    }

    #[test]
    fn a_patient_reads_only_entries_about_her_records_operators_all() {
        let (_d, p) = policy();
        p.grant(&alice(), grant_to_bob(""), BOB_ENROLLED, T0)
            .unwrap();
        let carol = Caller::Patient(user("carol"));
        p.grant(
            &carol,
            GrantRequest {
                owner_id: String::new(),
                ..grant_to_bob("")
            },
            BOB_ENROLLED,
            T0,
        )
        .unwrap();
        let hers = p.list_audit(&alice(), 0, 0, T0).unwrap();
        assert_eq!(hers.len(), 1);
        assert!(hers.iter().all(|e| e.owner_id == "alice"));
        let all = p.list_audit(&ops(), 0, 0, T0).unwrap();
        // Both grants and alice's listing, which names no owner.
        assert_eq!(all.len(), 3);
        assert_eq!(
            (
                all[2].action.as_str(),
                all[2].actor.as_str(),
                all[2].owner_id.as_str()
            ),
            ("list_audit", "patient/alice", "")
        );
        assert!(all[2].detail.contains("alice's view"), "{}", all[2].detail);
        assert_eq!(p.list_audit(&ops(), 1, 1, T0).unwrap().len(), 1);
        for caller in [doctor_bob(), srs(), Caller::Anonymous] {
            not_entitled(
                p.list_audit(&caller, 0, 0, T0),
                "may not read the audit log",
            );
        }
    }

    #[test]
    fn published_heads_come_whole_or_not_at_all() {
        assert_eq!(expected_head(0, &[]).unwrap(), None);
        assert_eq!(expected_head(3, &[7; 32]).unwrap(), Some((3, [7; 32])));
        for (seq, hash) in [
            (0, vec![7; 32]),
            (3, vec![]),
            (3, vec![0; 5]),
            (1, vec![0; 33]),
        ] {
            malformed(
                expected_head(seq, &hash),
                "expected_seq and expected_hash (32 bytes) go together",
            );
        }
    }

    #[tokio::test]
    async fn verification_is_scoped_to_the_caller_and_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PolicyStore::open(dir.path()).unwrap());
        let p = Policy::with_verify_wait(store, Duration::from_millis(50));
        p.grant(&alice(), grant_to_bob(""), BOB_ENROLLED, T0)
            .unwrap();
        p.grant(
            &Caller::Patient(user("carol")),
            grant_to_bob(""),
            BOB_ENROLLED,
            T0,
        )
        .unwrap();

        let global = p.verify_audit(&ops(), None).await.unwrap().run().unwrap();
        assert!(global.ok && global.entries == 2, "{global:?}");
        let own = p.verify_audit(&alice(), None).await.unwrap().run().unwrap();
        assert!(own.ok && own.entries == 1 && own.head_seq == 1, "{own:?}");
        assert_eq!(own.first_bad_seq, None);
        // Carol's entry is not a head alice was shown.
        let carols = Some((global.head_seq, global.head_hash));
        let wrong = p
            .verify_audit(&alice(), carols)
            .await
            .unwrap()
            .run()
            .unwrap();
        assert!(!wrong.ok, "{wrong:?}");
        for caller in [doctor_bob(), srs(), Caller::Anonymous] {
            not_entitled(
                p.verify_audit(&caller, None).await.map(drop),
                "may not read",
            );
        }

        let running = p.verify_audit(&ops(), None).await.unwrap();
        match p.verify_audit(&alice(), None).await.map(drop) {
            Err(DomainError::UsedUp(m)) => {
                assert!(m.contains("another audit verification is running"), "{m}")
            }
            other => panic!("a second verification was admitted: {other:?}"),
        }
        // The slot is held until the job has run, not until it is admitted.
        assert!(running.run().unwrap().ok);
        assert!(p.verify_audit(&alice(), None).await.is_ok());
    }

    fn observed(action: &str, outcome: &str) -> ObservedEvent {
        ObservedEvent {
            action: action.into(),
            owner_id: "alice".into(),
            partition: "medical".into(),
            subject: "practitioner/doctor/bob".into(),
            record_id: String::new(),
            outcome: outcome.into(),
            detail: "read".into(),
        }
    }

    #[test]
    fn services_record_events_in_the_known_vocabulary_only() {
        let (_d, p) = policy();
        let cloud = Caller::Service(Service::CloudStorage);
        let get = Rpc::GetRecord.audit_action();
        let seq = p.record_event(&cloud, observed(get, "ok"), T0).unwrap();
        assert_eq!(seq, Some(1));
        let denied = format!("denied:{get}");
        p.record_event(&cloud, observed(&denied, "denied"), T0)
            .unwrap();
        let entries = log(&p);
        assert_eq!(entries[0].actor, "service/cloud-storage");
        assert_eq!(
            (entries[0].action.as_str(), entries[0].outcome.as_str()),
            (get, "ok")
        );
        assert_eq!(entries[1].action, denied);

        for caller in [alice(), doctor_bob(), ops(), Caller::Anonymous] {
            not_entitled(
                p.record_event(&caller, observed(get, "ok"), T0),
                "only mesh services record audit events",
            );
        }
        malformed(
            p.record_event(&cloud, observed("", "ok"), T0),
            "action is required",
        );
        malformed(
            p.record_event(&cloud, observed("download", "ok"), T0),
            "unknown audit action \"download\"",
        );
        malformed(
            p.record_event(&cloud, observed(get, "maybe"), T0),
            "unknown audit outcome \"maybe\"",
        );
        malformed(
            p.record_event(&cloud, observed(get, ""), T0),
            "unknown audit outcome",
        );
        let mut long = observed(get, "ok");
        long.subject = "s".repeat(MAX_EVENT_FIELD_LEN + 1);
        malformed(
            p.record_event(&cloud, long, T0),
            "subject is longer than 256 bytes",
        );
        let mut long = observed(get, "ok");
        long.detail = "d".repeat(MAX_EVENT_DETAIL_LEN + 1);
        malformed(
            p.record_event(&cloud, long, T0),
            "detail is longer than 4096 bytes",
        );
        assert!(matches!(
            p.record_event(
                &cloud,
                ObservedEvent {
                    owner_id: "Bad Id".into(),
                    ..observed(get, "ok")
                },
                T0
            ),
            Err(DomainError::BadName(_))
        ));
        assert_eq!(log(&p).len(), 2, "nothing refused was written");
    }

    #[test]
    fn refusals_by_the_table_are_written_as_denied_rpc() {
        let (_d, p) = policy();
        let grant = Rpc::Grant.spec().name;
        record_refusal(
            &**p.store(),
            "practitioner/doctor/bob".into(),
            grant,
            "may not call".into(),
            T0,
        )
        .unwrap();
        let e = &log(&p)[0];
        assert_eq!(e.action, "denied:sesphr.v1.AccessPolicy/Grant");
        assert_eq!(e.outcome, "denied");
        assert_eq!(e.actor, "practitioner/doctor/bob");
        malformed(
            record_refusal(
                &**p.store(),
                "x".into(),
                "sesphr.v1.Fake/Row",
                String::new(),
                T0,
            ),
            "not a row of the RPC table",
        );
    }
}

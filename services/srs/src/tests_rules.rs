//! The setup service's and the nodes' rules, driven without tonic: real
//! sled stores (one per service and node), a real CA, real PRE keys, a
//! dealt OPRF key, an access gate that decides from a grant table, and the
//! setup service itself as the nodes' directory.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sesphr::rpc::Rpc;
use sesphr_crypto as crypto;
use sesphr_identity::{Caller, Identity, NodeIndex, PartitionName, Role, Service, UserId};
use sesphr_mesh::pki::CertificateAuthority;
use zeroize::Zeroizing;

use crate::directory::{Directory, DirectoryEntry};
use crate::gate::{AccessGate, AuditEvent, Decision, Outcome, ReEncryptSubject};
use crate::node::{KfragFiling, Node, NodeConfig, ReEncryption};
use crate::setup::{
    AuditedLookups, Enrollment, LOOKUP_AUDIT_WINDOW_SECS, MAX_CSR_BYTES, MAX_REMEMBERED_LOOKUPS,
    Setup, SetupConfig,
};
use crate::{DomainError, KfragSet, SrsStore, Store};

const TD: &str = "sesphr.test";
/// A patient's self-registration carries no invitation.
const TOKEN: &str = "";
const T0: i64 = 1_700_000_000;

/// One audit entry, as the gate received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Audited {
    subject: String,
    rpc: Rpc,
    owner_id: String,
    partition: String,
    outcome: Outcome,
    detail: String,
}

/// AccessPolicy reduced to its table: a re-encryption is allowed exactly
/// when (owner, partition, grantee) was granted. `down` makes it
/// unreachable, as a partitioned network would.
#[derive(Clone, Default)]
struct TableGate {
    grants: Arc<Mutex<HashSet<(String, String, String)>>>,
    down: Arc<AtomicBool>,
    audits: Arc<Mutex<Vec<Audited>>>,
    /// (user, device, until) the setup service asked AccessPolicy to revoke.
    revoked: Arc<Mutex<Vec<(String, String, i64)>>>,
}

impl TableGate {
    fn grant(&self, owner: &str, partition: &str, grantee: &str) {
        self.grants
            .lock()
            .unwrap()
            .insert((owner.into(), partition.into(), grantee.into()));
    }

    fn audits(&self) -> Vec<Audited> {
        self.audits.lock().unwrap().clone()
    }

    fn audits_of(&self, rpc: Rpc) -> Vec<Audited> {
        self.audits().into_iter().filter(|a| a.rpc == rpc).collect()
    }
}

impl AccessGate for TableGate {
    async fn may_reencrypt(
        &self,
        grantee: &Caller,
        s: ReEncryptSubject<'_>,
    ) -> Result<Decision, DomainError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DomainError::Unavailable(
                "access policy could not be asked; refusing access".into(),
            ));
        }
        let Some((_, id)) = grantee.as_user() else {
            return Err(DomainError::NotEntitled(format!("{grantee} is not a user")));
        };
        let key = (
            s.owner_id.to_string(),
            s.partition.to_string(),
            id.to_string(),
        );
        let allowed = self.grants.lock().unwrap().contains(&key);
        Ok(Decision {
            allowed,
            reason: if allowed {
                String::new()
            } else {
                "no grant".into()
            },
        })
    }

    async fn audit(&self, e: AuditEvent<'_>) {
        self.audits.lock().unwrap().push(Audited {
            subject: e.subject.into(),
            rpc: e.rpc,
            owner_id: e.owner_id.into(),
            partition: e.partition.into(),
            outcome: e.outcome,
            detail: e.detail.into(),
        });
    }

    async fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
    ) -> Result<(), DomainError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DomainError::Unavailable("access policy down".into()));
        }
        self.revoked
            .lock()
            .unwrap()
            .push((user_id.into(), device.into(), until));
        Ok(())
    }
}

/// A user's client-side keys.
struct Keys {
    master: crypto::MasterSecret,
    pre: crypto::SecretKey,
}

impl Keys {
    fn new() -> Self {
        let mut rng = rand::rng();
        Keys {
            master: crypto::MasterSecret::generate(&mut rng),
            pre: crypto::SecretKey::generate(&mut rng),
        }
    }

    fn enrollment(&self, token: &str, user_id: &str, role: Role) -> Enrollment {
        Enrollment {
            invitation: Zeroizing::new(token.into()),
            user_id: user_id.into(),
            role: Some(role),
            pre_public_key: self.pre.public_key().to_bytes().to_vec(),
            verifying_key: self
                .master
                .signing_key()
                .verifying_key()
                .to_bytes()
                .to_vec(),
            csr_der: sesphr_mesh::pki::make_csr().unwrap().0,
            key_proof: Vec::new(),
            device: String::new(),
        }
    }

    /// A re-enrolment of an enrolled id: the same request with a key
    /// proof over its CSR.
    fn reenrollment(&self, token: &str, user_id: &str, device: &str) -> Enrollment {
        let mut e = self.enrollment(token, user_id, Role::Patient);
        e.role = None;
        e.device = device.into();
        e.key_proof = self
            .master
            .signing_key()
            .sign_key_proof(TD, user_id, &e.csr_der)
            .unwrap()
            .to_vec();
        e
    }
}

/// The setup service as the nodes' directory, in process. `down` makes it
/// unreachable.
#[derive(Clone)]
struct LocalDirectory {
    setup: Arc<Setup<SrsStore, TableGate>>,
    down: Arc<AtomicBool>,
}

impl Directory for LocalDirectory {
    async fn user(&self, user_id: &UserId) -> Result<DirectoryEntry, DomainError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DomainError::Unavailable("setup service down".into()));
        }
        let u = self
            .setup
            .get_user(&Caller::SrsNode(NodeIndex::new(1).unwrap()), user_id)
            .await?;
        Ok(DirectoryEntry {
            role: u.role,
            pre_public_key: u.pre_public_key,
            verifying_key: u.verifying_key,
        })
    }
}

const THRESHOLD: usize = 2;
const NODES: usize = 3;

struct World {
    _dirs: Vec<tempfile::TempDir>,
    setup: Arc<Setup<SrsStore, TableGate>>,
    setup_store: Arc<SrsStore>,
    /// Nodes 1..=3 (index i at position i - 1), each with its own store.
    nodes: Vec<Node<SrsStore, TableGate, LocalDirectory>>,
    node_stores: Vec<Arc<SrsStore>>,
    directory_down: Arc<AtomicBool>,
    oprf_key: sesphr_dedup::ServerKey,
    gate: TableGate,
}

fn world() -> World {
    let mut dirs = Vec::new();
    let mut store = || {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SrsStore::open(dir.path()).unwrap());
        dirs.push(dir);
        store
    };
    let setup_store = store();
    let (ca, _) = CertificateAuthority::generate_user_ca(TD).unwrap();
    let (service_ca, _) = CertificateAuthority::generate(TD).unwrap();
    let gate = TableGate::default();
    let config = SetupConfig {
        trust_domain: TD.into(),
        service_ca_pem: service_ca.cert_pem().to_owned(),
        user_cert_validity: sesphr_mesh::pki::USER_CERT_VALIDITY,
        self_registrations_per_minute: Some(600),
        deny: None,
    };
    let setup = Arc::new(Setup::new(
        setup_store.clone(),
        gate.clone(),
        Arc::new(ca),
        config,
    ));
    let directory_down = Arc::new(AtomicBool::new(false));
    let oprf_key = sesphr_dedup::ServerKey::random(&mut rand::rng());
    let shares =
        sesphr_dedup::deal(&mut rand::rng(), &oprf_key, THRESHOLD as u8, NODES as u8).unwrap();
    let mut nodes = Vec::new();
    let mut node_stores = Vec::new();
    for share in shares {
        let s = store();
        let directory = LocalDirectory {
            setup: setup.clone(),
            down: directory_down.clone(),
        };
        let config = NodeConfig {
            index: NodeIndex::new(u32::from(share.index())).unwrap(),
            reencrypt_rate: 1.0,
            content_key_rate: 1.0,
        };
        nodes.push(Node::new(s.clone(), gate.clone(), directory, share, config).unwrap());
        node_stores.push(s);
    }
    World {
        _dirs: dirs,
        setup,
        setup_store,
        nodes,
        node_stores,
        directory_down,
        oprf_key,
        gate,
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn patient(id: &str) -> Caller {
    Caller::Patient(uid(id))
}

fn doctor(id: &str) -> Caller {
    Caller::Practitioner {
        role: Role::Doctor,
        id: uid(id),
    }
}

fn medical() -> PartitionName {
    PartitionName::parse("medical").unwrap()
}

impl World {
    /// Enrols `id`: a patient by self-registration, anyone else by an
    /// operator's invitation.
    async fn enroll(&self, id: &str, role: Role) -> Keys {
        let keys = Keys::new();
        let invitation = match role {
            Role::Patient => String::new(),
            _ => self.invite(&operator(), id, role).await.to_string(),
        };
        self.setup
            .enroll(
                &Caller::Anonymous,
                None,
                keys.enrollment(&invitation, id, role),
            )
            .await
            .unwrap();
        keys
    }

    async fn invite(&self, by: &Caller, id: &str, role: Role) -> Zeroizing<String> {
        self.setup
            .invite(by, id, Some(role), 0)
            .await
            .unwrap()
            .invitation
    }

    fn node(&self, i: usize) -> &Node<SrsStore, TableGate, LocalDirectory> {
        &self.nodes[i - 1]
    }

    /// `owner`'s kfrag shares for `grantee` on medical@`epoch`, as a client
    /// makes them: share `i` for node `i` (position `i - 1`).
    fn filings(
        &self,
        owner: &Keys,
        grantee: &Keys,
        grantee_id: &str,
        epoch: u32,
    ) -> Vec<KfragFiling> {
        self.filings_as(owner, "alice", grantee, grantee_id, epoch)
    }

    fn filings_as(
        &self,
        owner: &Keys,
        owner_id: &str,
        grantee: &Keys,
        grantee_id: &str,
        epoch: u32,
    ) -> Vec<KfragFiling> {
        let (sk, pk) = owner.master.partition_keys("medical", epoch).unwrap();
        let context = crypto::grant_context(owner_id, "medical", epoch, grantee_id);
        let kfrags = crypto::generate_node_kfrags(
            &mut rand::rng(),
            &sk,
            &grantee.pre.public_key(),
            &owner.master.signing_key(),
            THRESHOLD,
            NODES,
            &context,
        )
        .unwrap();
        kfrags
            .iter()
            .map(|k| KfragFiling {
                partition: medical(),
                grantee_id: uid(grantee_id),
                epoch,
                delegating_public_key: pk.to_bytes().to_vec(),
                kfrag: k.to_bytes().to_vec(),
            })
            .collect()
    }

    /// Node 1's share of alice's grant to `grantee_id`.
    fn filing(&self, owner: &Keys, grantee: &Keys, grantee_id: &str, epoch: u32) -> KfragFiling {
        self.filings(owner, grantee, grantee_id, epoch).remove(0)
    }
}

fn operator() -> Caller {
    Caller::Operator(uid("ops"))
}

fn denied_with(e: &DomainError, want: &str) -> bool {
    matches!(e, DomainError::NotEntitled(m) if m.contains(want))
}

#[tokio::test]
async fn practitioners_enrol_only_by_an_invitation_for_their_id_and_role_once() {
    let w = world();
    let keys = Keys::new();
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let enroll = |invitation: &str, id: &str, role: Role| {
        let request = keys.enrollment(invitation, id, role);
        let setup = w.setup.clone();
        async move { setup.enroll(&Caller::Anonymous, Some(ip), request).await }
    };
    // The attack: a self-asserted doctor and emergency clinician.
    for (id, role) in [("dr-house", Role::Doctor), ("er-doc", Role::Emergency)] {
        let e = enroll("", id, role).await.unwrap_err();
        assert!(denied_with(&e, "requires an invitation"), "{e:?}");
    }
    for bad in ["guess", "inv1-xyz", &format!("inv1-{}", "a".repeat(63))] {
        let e = enroll(bad, "zed", Role::Doctor).await.unwrap_err();
        assert!(denied_with(&e, "malformed"), "{bad}: {e:?}");
    }
    let forged = format!("inv1-{}", "0".repeat(64));
    let e = enroll(&forged, "zed", Role::Doctor).await.unwrap_err();
    assert!(denied_with(&e, "not valid"), "{e:?}");
    assert_eq!(w.setup_store.user("dr-house").unwrap(), None);
    let denied = w.gate.audits_of(Rpc::Enroll);
    assert_eq!(denied.len(), 6);
    assert!(
        denied
            .iter()
            .all(|a| a.outcome == Outcome::Denied && a.subject == "anonymous@192.0.2.7")
    );

    // An operator's invitation: only its id and role, only once.
    let inv = w.invite(&operator(), "zed", Role::Doctor).await;
    assert!(inv.starts_with("inv1-") && inv.len() == 5 + 64);
    let e = enroll(&inv, "zoe", Role::Doctor).await.unwrap_err();
    assert!(denied_with(&e, "invitation is for id zed"), "{e:?}");
    let e = enroll(&inv, "zed", Role::Nurse).await.unwrap_err();
    assert!(denied_with(&e, "invitation is for role doctor"), "{e:?}");
    let ok = enroll(&inv, "zed", Role::Doctor).await.unwrap();
    assert_eq!(
        ok.identity,
        Identity::user(TD, Role::Doctor, "zed").unwrap()
    );
    assert!(ok.not_after > sesphr_mesh::unix_now() + 29 * 86_400);
    let e = enroll(&inv, "zed", Role::Doctor).await.unwrap_err();
    assert!(denied_with(&e, "already used"), "{e:?}");
    let last = w.gate.audits_of(Rpc::Enroll);
    assert!(last.iter().any(|a| a.outcome == Outcome::Ok
        && a.detail.starts_with(
            "enrolled by invitation as spiffe://sesphr.test/practitioner/doctor/zed"
        )));
    // Only the hash is stored: the invitation's text is nowhere in the store.
    let inviting = w.gate.audits_of(Rpc::Invite);
    assert!(inviting.iter().all(|a| !a.detail.contains(&inv[5..])));

    // Expired invitations are refused with the reason.
    let old = w
        .setup
        .invite_at(
            &operator(),
            "yan",
            Some(Role::Nurse),
            3_600,
            sesphr_mesh::unix_now() - 7_200,
        )
        .await
        .unwrap();
    let e = enroll(&old.invitation, "yan", Role::Nurse)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "invitation expired"), "{e:?}");
    // More than 30 days is refused at issue.
    let e = w
        .setup
        .invite(&operator(), "yan", Some(Role::Nurse), 31 * 86_400)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Malformed(_)), "{e:?}");
}

#[tokio::test]
async fn patients_invite_family_and_friends_only_and_a_bounded_number() {
    let w = world();
    w.enroll("alice", Role::Patient).await;
    let alice = patient("alice");
    let e = w
        .setup
        .invite(&alice, "dr-evil", Some(Role::Doctor), 0)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "family and friends only"), "{e:?}");
    let e = w
        .setup
        .invite(&alice, "alice", Some(Role::Friend), 0)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    let inv = w.invite(&alice, "dave", Role::Friend).await;
    let keys = Keys::new();
    w.setup
        .enroll(
            &Caller::Anonymous,
            None,
            keys.enrollment(&inv, "dave", Role::Friend),
        )
        .await
        .unwrap();
    // A patient's invitation lasts an hour at least (short ones would let
    // her cycle through the cap below).
    let e = w
        .setup
        .invite(&alice, "quick", Some(Role::Friend), 60)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Malformed(_)), "{e:?}");
    for i in 0..crate::setup::MAX_OPEN_INVITATIONS_PER_PATIENT {
        w.invite(&alice, &format!("kin{i}"), Role::Family).await;
    }
    let e = w
        .setup
        .invite(&alice, "one-more", Some(Role::Family), 0)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::UsedUp(_)), "{e:?}");
    // Operators are not bounded.
    w.invite(&operator(), "one-more", Role::Family).await;
}

#[tokio::test]
async fn a_reinvitation_keeps_the_id_role_and_keys_and_issues_a_new_certificate() {
    let w = world();
    let bob = w.enroll("bob", Role::Doctor).await;
    let before = w.setup_store.user("bob").unwrap().unwrap();
    let e = w
        .setup
        .invite(&operator(), "bob", Some(Role::Nurse), 0)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Conflict(_)), "{e:?}");
    let again = w
        .setup
        .invite(&operator(), "bob", Some(Role::Doctor), 0)
        .await
        .unwrap();
    assert!(again.reenrollment);
    // Someone else's keys under bob's re-invitation: refused, still unused.
    let thief = Keys::new();
    let mut stolen = thief.reenrollment(&again.invitation, "bob", "");
    stolen.role = Some(Role::Doctor);
    let e = w
        .setup
        .enroll(&Caller::Anonymous, None, stolen)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "keeps bob's registered keys"), "{e:?}");
    // bob's own public keys with the thief's proof: the proof fails.
    let mut forged = bob.reenrollment(&again.invitation, "bob", "");
    forged.key_proof = thief
        .master
        .signing_key()
        .sign_key_proof(TD, "bob", &forged.csr_der)
        .unwrap()
        .to_vec();
    let e = w
        .setup
        .enroll(&Caller::Anonymous, None, forged)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "does not verify"), "{e:?}");
    // The re-invitation alone (a bearer token) is not enough.
    let e = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            bob.enrollment(&again.invitation, "bob", Role::Doctor),
        )
        .await
        .unwrap_err();
    assert!(denied_with(&e, "needs their key proof"), "{e:?}");
    let mut proven = bob.reenrollment(&again.invitation, "bob", "");
    proven.role = Some(Role::Doctor);
    let ok = w
        .setup
        .enroll(&Caller::Anonymous, None, proven)
        .await
        .unwrap();
    assert_eq!(
        ok.identity,
        Identity::user(TD, Role::Doctor, "bob").unwrap()
    );
    let after = w.setup_store.user("bob").unwrap().unwrap();
    assert_eq!(after.pre_public_key, before.pre_public_key);
    assert_eq!(after.enrolled_at, before.enrolled_at);
    assert_ne!(after.certificate_der, before.certificate_der);
}

#[tokio::test]
async fn renewal_issues_a_new_certificate_for_the_caller_only() {
    let w = world();
    w.enroll("bob", Role::Doctor).await;
    let before = w.setup_store.user("bob").unwrap().unwrap();
    let bob = Caller::Practitioner {
        role: Role::Doctor,
        id: uid("bob"),
    };
    let csr = sesphr_mesh::pki::make_csr().unwrap().0;
    let issued_at = sesphr_mesh::trust::validity(&before.certificate_der)
        .unwrap()
        .0;
    let renewed = w
        .setup
        .renew(&bob, Some((issued_at, "device-1".into())), csr.clone())
        .await
        .unwrap();
    assert_eq!(
        renewed.identity,
        Identity::user(TD, Role::Doctor, "bob").unwrap()
    );
    let after = w.setup_store.user("bob").unwrap().unwrap();
    assert_ne!(after.certificate_der, before.certificate_der);
    assert!(
        w.gate
            .audits_of(Rpc::Renew)
            .iter()
            .any(|a| a.outcome == Outcome::Ok)
    );
    // Nobody renews as an id it does not hold, nor under another role.
    let ghost = Caller::Practitioner {
        role: Role::Doctor,
        id: uid("ghost"),
    };
    assert!(matches!(
        w.setup
            .renew(&ghost, Some((issued_at, "device-1".into())), csr.clone())
            .await,
        Err(DomainError::Unknown(_))
    ));
    let as_friend = Caller::Practitioner {
        role: Role::Friend,
        id: uid("bob"),
    };
    assert!(matches!(
        w.setup
            .renew(&as_friend, Some((issued_at, "device-1".into())), csr)
            .await,
        Err(DomainError::NotEntitled(_))
    ));
}

#[tokio::test]
async fn self_registration_is_a_setting_and_rate_limited() {
    let w = world();
    let keys = Keys::new();
    // The world allows 600 a minute: a burst of 600, then refusals.
    let mut refused = None;
    for i in 0..700 {
        let r = w
            .setup
            .enroll(
                &Caller::Anonymous,
                None,
                keys.enrollment("", &format!("p{i}"), Role::Patient),
            )
            .await;
        if let Err(e) = r {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("self-registration is rate-limited");
    assert!((590..=610).contains(&i), "refused after {i}");
    assert!(matches!(e, DomainError::UsedUp(_)), "{e:?}");

    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::generate_user_ca(TD).unwrap();
    let closed = Setup::new(
        Arc::new(SrsStore::open(dir.path()).unwrap()),
        TableGate::default(),
        Arc::new(ca),
        SetupConfig {
            trust_domain: TD.into(),
            service_ca_pem: String::new(),
            user_cert_validity: sesphr_mesh::pki::USER_CERT_VALIDITY,
            self_registrations_per_minute: None,
            deny: None,
        },
    );
    let e = closed
        .enroll(
            &Caller::Anonymous,
            None,
            keys.enrollment("", "zed", Role::Patient),
        )
        .await
        .unwrap_err();
    assert!(denied_with(&e, "does not allow self-registration"), "{e:?}");
}

#[tokio::test]
async fn enrolment_checks_role_keys_and_csr() {
    let w = world();
    let keys = Keys::new();
    let mut cases: Vec<(Enrollment, &str)> = Vec::new();
    let mut r = keys.enrollment(TOKEN, "zed", Role::Patient);
    r.role = None;
    cases.push((r, "role must be set"));
    let mut r = keys.enrollment(TOKEN, "zed", Role::Patient);
    r.pre_public_key = vec![5; 33];
    cases.push((r, "pre_public_key is not a valid"));
    let mut r = keys.enrollment(TOKEN, "zed", Role::Patient);
    r.verifying_key = vec![9; 5];
    cases.push((r, "verifying_key is not a valid"));
    let mut r = keys.enrollment(TOKEN, "zed", Role::Patient);
    r.csr_der = vec![0x30; MAX_CSR_BYTES + 1];
    cases.push((r, "csr_der must be 1 to"));
    let mut r = keys.enrollment(TOKEN, "zed", Role::Patient);
    r.csr_der = vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3];
    cases.push((r, "certificate signing request rejected"));
    for (request, want) in cases {
        let e = w
            .setup
            .enroll(&Caller::Anonymous, None, request)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DomainError::Malformed(m) if m.contains(want)),
            "{want}: {e:?}"
        );
    }
    assert_eq!(w.setup_store.users_count().unwrap(), 0);
}

#[tokio::test]
async fn reencrypt_allowance_is_per_identity_and_refills() {
    let w = world();
    let t = Instant::now();
    // Rate 1/s, burst 4.
    for _ in 0..4 {
        w.node(1).admit_reencryption_at(&doctor("bob"), t).unwrap();
    }
    let e = w
        .node(1)
        .admit_reencryption_at(&doctor("bob"), t)
        .err()
        .unwrap();
    assert!(
        matches!(&e, DomainError::UsedUp(m) if m == "re-encryption rate limit reached for practitioner/doctor/bob; retry shortly"),
        "{e:?}"
    );
    // Another identity has its own allowance; time refills it.
    w.node(1)
        .admit_reencryption_at(&patient("carol"), t)
        .unwrap();
    w.node(1)
        .admit_reencryption_at(&doctor("bob"), t + Duration::from_secs(2))
        .unwrap();
    // Services and operators never re-encrypt.
    for who in [
        Caller::Service(Service::CloudStorage),
        Caller::Operator(uid("ops")),
    ] {
        let e = w.node(1).admit_reencryption_at(&who, t).err().unwrap();
        assert!(
            matches!(&e, DomainError::NotEntitled(m) if m.ends_with("is not a patient or practitioner")),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn lookups_of_others_are_audited_once_an_hour() {
    let w = world();
    w.enroll("alice", Role::Patient).await;
    let found = w
        .setup
        .get_user_at(&doctor("bob"), &uid("alice"), T0)
        .await
        .unwrap();
    assert_eq!(found.user_id, "alice");
    w.setup
        .get_user_at(&doctor("bob"), &uid("alice"), T0 + 10)
        .await
        .unwrap();
    w.setup
        .get_user_at(
            &doctor("bob"),
            &uid("alice"),
            T0 + LOOKUP_AUDIT_WINDOW_SECS - 1,
        )
        .await
        .unwrap();
    assert_eq!(w.gate.audits_of(Rpc::GetUser).len(), 1);
    w.setup
        .get_user_at(&doctor("bob"), &uid("alice"), T0 + LOOKUP_AUDIT_WINDOW_SECS)
        .await
        .unwrap();
    assert_eq!(w.gate.audits_of(Rpc::GetUser).len(), 2);
    // Self-lookups and services are not audited; another looker is.
    w.setup
        .get_user_at(&patient("alice"), &uid("alice"), T0)
        .await
        .unwrap();
    w.setup
        .get_user_at(&Caller::Service(Service::CloudStorage), &uid("alice"), T0)
        .await
        .unwrap();
    assert_eq!(w.gate.audits_of(Rpc::GetUser).len(), 2);
    let e = w
        .setup
        .get_user_at(&patient("carol"), &uid("ghost"), T0)
        .await
        .unwrap_err();
    assert!(matches!(&e, DomainError::Unknown(m) if m == "no enrolled user ghost"));
    let audits = w.gate.audits_of(Rpc::GetUser);
    let expected = Audited {
        subject: "patient/carol".into(),
        rpc: Rpc::GetUser,
        owner_id: "ghost".into(),
        partition: String::new(),
        outcome: Outcome::Probe,
        detail: "not enrolled".into(),
    };
    assert_eq!(audits.last(), Some(&expected));
    assert_eq!(audits[0].detail, "found");
}

#[test]
fn the_lookup_memory_is_bounded_and_never_forgets_a_fresh_entry() {
    let seen = AuditedLookups::new();
    for i in 0..MAX_REMEMBERED_LOOKUPS {
        assert!(seen.due(&format!("c{i}"), "alice", T0));
    }
    // Full of fresh entries: the next pair is audited every time.
    assert!(seen.due("late", "alice", T0));
    assert!(seen.due("late", "alice", T0 + 1));
    assert!(!seen.due("c0", "alice", T0 + 1));
    // Once the old entries age out, room is made and the window applies.
    let later = T0 + LOOKUP_AUDIT_WINDOW_SECS;
    assert!(seen.due("late", "alice", later));
    assert!(!seen.due("late", "alice", later + 1));
}

#[tokio::test]
async fn only_the_owner_files_and_revokes_its_kfrags() {
    let w = world();
    let alice = w.enroll("alice", Role::Patient).await;
    let bob = w.enroll("bob", Role::Doctor).await;
    let mallory = w.enroll("mallory", Role::Patient).await;
    let node = w.node(1);

    // Not a patient: no kfrags of its own to file.
    let e = node
        .put_kfrag(&doctor("bob"), w.filing(&bob, &alice, "alice", 0))
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::NotEntitled(_)), "{e:?}");
    // Alice's share replayed by mallory is bound to alice's grant, and
    // made again under mallory's name it carries alice's signature.
    let e = node
        .put_kfrag(&patient("mallory"), w.filing(&alice, &bob, "bob", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DomainError::Malformed(m) if m.contains("is not node 1's share")),
        "{e:?}"
    );
    let forged = w.filings_as(&alice, "mallory", &bob, "bob", 0).remove(0);
    let e = node
        .put_kfrag(&patient("mallory"), forged)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DomainError::Malformed(m) if m.contains("does not verify")),
        "{e:?}"
    );
    // A share made for bob, filed for mallory as grantee.
    let misfiled = w.filings_as(&alice, "alice", &bob, "mallory", 0).remove(0);
    let e = node
        .put_kfrag(&patient("alice"), misfiled)
        .await
        .unwrap_err();
    assert!(matches!(&e, DomainError::Malformed(m) if m.contains("kfrag does not verify")));
    let e = node
        .put_kfrag(&patient("alice"), w.filing(&alice, &alice, "alice", 0))
        .await
        .unwrap_err();
    assert!(matches!(&e, DomainError::Malformed(m) if m == "an owner needs no kfrags for itself"));
    let mut none = w.filing(&alice, &bob, "bob", 0);
    none.kfrag.clear();
    let e = node.put_kfrag(&patient("alice"), none).await.unwrap_err();
    assert!(matches!(&e, DomainError::Malformed(m) if m == "kfrag must be 1 to 4096 bytes"));
    let ghost = w.filings_as(&alice, "alice", &bob, "ghost", 0).remove(0);
    let e = node.put_kfrag(&patient("alice"), ghost).await.unwrap_err();
    assert!(matches!(&e, DomainError::Unknown(m) if m == "no enrolled user ghost"));
    // Node 2's share sent to node 1, and node 1's share to node 3.
    let shares = w.filings(&alice, &bob, "bob", 0);
    for (share, node) in [(1, 1), (0, 3)] {
        let filing = w.filings(&alice, &bob, "bob", 0).remove(share);
        let e = w
            .node(node)
            .put_kfrag(&patient("alice"), filing)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DomainError::Malformed(m) if m.contains(&format!("is not node {node}'s share"))),
            "{e:?}"
        );
    }
    // The setup service unreachable and the owner unknown to the node: no
    // signature can be checked, so nothing is stored.
    w.directory_down.store(true, Ordering::SeqCst);
    let e = node
        .put_kfrag(&patient("alice"), w.filing(&alice, &bob, "bob", 0))
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Unavailable(_)), "{e:?}");
    w.directory_down.store(false, Ordering::SeqCst);
    assert!(
        w.gate.audits_of(Rpc::PutKfrag).is_empty(),
        "refusals change nothing"
    );

    for (i, filing) in shares.into_iter().enumerate() {
        w.node(i + 1)
            .put_kfrag(&patient("alice"), filing)
            .await
            .unwrap();
    }
    let audits = w.gate.audits_of(Rpc::PutKfrag);
    assert_eq!(audits.len(), 3);
    let audit = &audits[0];
    assert_eq!(
        (
            audit.subject.as_str(),
            audit.owner_id.as_str(),
            audit.partition.as_str()
        ),
        ("patient/alice", "alice", "medical")
    );
    assert_eq!(audit.detail, "node 1 kfrag for bob epoch 0");
    for store in &w.node_stores {
        let set = store.kfrags("alice", "medical", 0, "bob").unwrap().unwrap();
        assert_eq!(set.kfrags.len(), 1, "each node keeps its one share");
    }
    assert_ne!(
        w.node_stores[0]
            .kfrags("alice", "medical", 0, "bob")
            .unwrap(),
        w.node_stores[1]
            .kfrags("alice", "medical", 0, "bob")
            .unwrap()
    );

    // Mallory revoking "bob" reaches only mallory's own (none).
    let removed = node
        .delete_kfrags(&patient("mallory"), &medical(), &uid("bob"), None)
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert!(
        w.node_stores[0]
            .kfrags("alice", "medical", 0, "bob")
            .unwrap()
            .is_some()
    );
    let e = node
        .delete_kfrags(&doctor("bob"), &medical(), &uid("bob"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::NotEntitled(_)));
    let removed = node
        .delete_kfrags(&patient("alice"), &medical(), &uid("bob"), None)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let audit = w.gate.audits_of(Rpc::DeleteKfrags).pop().unwrap();
    assert_eq!(audit.detail, "1 kfrag set(s) of bob removed");
    drop(mallory);
}

#[tokio::test]
async fn reencryption_needs_a_grant_and_kfrags_and_any_two_nodes_decrypt() {
    let w = world();
    let alice = w.enroll("alice", Role::Patient).await;
    let bob = w.enroll("bob", Role::Doctor).await;
    let (_, medical_pk) = alice.master.partition_keys("medical", 0).unwrap();
    let (capsule, kem) = crypto::encapsulate(&mut rand::rng(), &medical_pk);
    let request = |capsules: Vec<Vec<u8>>| ReEncryption {
        owner_id: uid("alice"),
        partition: medical(),
        epoch: 0,
        record_id: None,
        capsules,
    };
    let capsule_bytes = capsule.to_bytes().to_vec();
    // Each ask a second after the last, so the allowance (1/s) never runs out.
    let clock = std::cell::Cell::new(Instant::now());
    let bob_asks = |node: usize, capsules| {
        clock.set(clock.get() + Duration::from_secs(1));
        let permit = w
            .node(node)
            .admit_reencryption_at(&doctor("bob"), clock.get())
            .unwrap();
        w.node(node).re_encrypt(permit, request(capsules))
    };

    let e = bob_asks(1, vec![]).await.unwrap_err();
    assert!(matches!(&e, DomainError::Malformed(m) if m == "send 1 to 64 capsules, not 0"));
    let e = bob_asks(1, vec![vec![0x55; 98]]).await.unwrap_err();
    assert!(matches!(&e, DomainError::Malformed(m) if m == "capsule 0 is malformed"));
    let e = bob_asks(1, vec![capsule_bytes.clone()]).await.unwrap_err();
    assert!(
        matches!(&e, DomainError::NotEntitled(m) if m == "practitioner/doctor/bob may not have alice's medical partition re-encrypted: no grant"),
        "{e:?}"
    );
    w.gate.grant("alice", "medical", "bob");
    let e = bob_asks(1, vec![capsule_bytes.clone()]).await.unwrap_err();
    assert!(
        matches!(&e, DomainError::NotEntitled(m) if m.contains("holds no re-encryption key at node 1 for alice's medical partition, epoch 0")),
        "{e:?}"
    );
    for (i, filing) in w.filings(&alice, &bob, "bob", 0).into_iter().enumerate() {
        w.node(i + 1)
            .put_kfrag(&patient("alice"), filing)
            .await
            .unwrap();
    }
    // AccessPolicy unreachable: refused, never served (fail closed).
    w.gate.down.store(true, Ordering::SeqCst);
    let e = bob_asks(2, vec![capsule_bytes.clone()]).await.unwrap_err();
    assert!(matches!(e, DomainError::Unavailable(_)), "{e:?}");
    w.gate.down.store(false, Ordering::SeqCst);

    let owner_vk = alice.master.signing_key().verifying_key();
    let bob_pk = bob.pre.public_key();
    let mut per_node = Vec::new();
    for node in 1..=NODES {
        let done = bob_asks(node, vec![capsule_bytes.clone(); 2])
            .await
            .unwrap();
        assert_eq!(done.delegating_public_key, medical_pk.to_bytes());
        assert_eq!(done.cfrags.len(), 2, "one cfrag per capsule");
        per_node.push(
            crypto::CapsuleFrag::from_bytes(&done.cfrags[0])
                .unwrap()
                .verify(&capsule, &owner_vk, &medical_pk, &bob_pk)
                .unwrap(),
        );
    }
    // Any two nodes' cfrags open the capsule; one node's never does.
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let cfrags: Vec<_> = pair.iter().map(|&i| per_node[i]).collect();
        let opened =
            crypto::decapsulate_reencrypted(&bob.pre, &medical_pk, &capsule, &cfrags).unwrap();
        assert!(opened == kem, "bob opens what alice sealed");
    }
    let alone = crypto::decapsulate_reencrypted(&bob.pre, &medical_pk, &capsule, &per_node[..1]);
    assert!(alone.map(|k| k != kem).unwrap_or(true));
    // A node asked twice still holds one share: the same share again.
    let again = bob_asks(1, vec![capsule_bytes.clone()]).await.unwrap();
    let again = crypto::CapsuleFrag::from_bytes(&again.cfrags[0])
        .unwrap()
        .verify(&capsule, &owner_vk, &medical_pk, &bob_pk)
        .unwrap();
    let twice =
        crypto::decapsulate_reencrypted(&bob.pre, &medical_pk, &capsule, &[per_node[0], again]);
    assert!(twice.map(|k| k != kem).unwrap_or(true));
}

#[tokio::test]
async fn a_tampered_kfrag_store_is_refused() {
    let w = world();
    let alice = w.enroll("alice", Role::Patient).await;
    let bob = w.enroll("bob", Role::Doctor).await;
    w.gate.grant("alice", "medical", "bob");
    // A share for another grantee key, written past the checks.
    let filing = w.filing(&alice, &Keys::new(), "bob", 0);
    let set = KfragSet {
        delegating_public_key: filing.delegating_public_key,
        kfrags: vec![filing.kfrag],
        stored_at: T0,
    };
    w.node_stores[0]
        .put_kfrags("alice", "medical", 0, "bob", set)
        .unwrap();
    let (_, pk) = alice.master.partition_keys("medical", 0).unwrap();
    let (capsule, _) = crypto::encapsulate(&mut rand::rng(), &pk);
    let permit = w.node(1).admit_reencryption(&doctor("bob")).unwrap();
    let e = w
        .node(1)
        .re_encrypt(
            permit,
            ReEncryption {
                owner_id: uid("alice"),
                partition: medical(),
                epoch: 0,
                record_id: None,
                capsules: vec![capsule.to_bytes().to_vec()],
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Corrupt(_)), "{e:?}");
    drop(bob);
}

#[tokio::test]
async fn content_key_shares_combine_to_the_mesh_key_and_are_rate_limited_and_audited() {
    let w = world();
    let t = Instant::now();
    let (state, blinded) = sesphr_dedup::blind(&mut rand::rng(), b"a file").unwrap();
    let e = w
        .node(1)
        .evaluate_content_key_at(&patient("alice"), &[1; 5], t)
        .await
        .unwrap_err();
    assert!(matches!(&e, DomainError::Malformed(m) if m.starts_with("blinded_element is not")));
    let mut evaluations = Vec::new();
    for node in [3, 1] {
        let bytes = w
            .node(node)
            .evaluate_content_key_at(&patient("alice"), &blinded, t)
            .await
            .unwrap();
        let evaluation = sesphr_dedup::ShareEvaluation::from_bytes(&bytes).unwrap();
        assert_eq!(usize::from(evaluation.index()), node);
        evaluations.push(evaluation);
    }
    let combined = sesphr_dedup::combine(THRESHOLD as u8, &evaluations).unwrap();
    let output = sesphr_dedup::finalize(state, b"a file", &combined).unwrap();
    assert_eq!(
        output,
        sesphr_dedup::oprf::evaluate(&w.oprf_key, b"a file").unwrap(),
        "two nodes' shares give the mesh key's evaluation"
    );
    // Node 1's burst of 4: the malformed ask, one above, two more.
    for _ in 0..2 {
        w.node(1)
            .evaluate_content_key_at(&patient("alice"), &blinded, t)
            .await
            .unwrap();
    }
    let e = w
        .node(1)
        .evaluate_content_key_at(&patient("alice"), &blinded, t)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DomainError::UsedUp(m) if m.starts_with("content-key rate limit reached for patient/alice"))
    );
    let audits = w.gate.audits_of(Rpc::EvaluateContentKey);
    assert_eq!(audits.len(), 4, "evaluations are audited, refusals are not");
    assert!(
        audits
            .iter()
            .all(|a| a.owner_id == "alice" && a.outcome == Outcome::Probe)
    );
}

#[test]
fn a_node_refuses_another_nodes_oprf_share() {
    let w = world();
    let key = sesphr_dedup::ServerKey::random(&mut rand::rng());
    let share = sesphr_dedup::deal(&mut rand::rng(), &key, 2, 3)
        .unwrap()
        .remove(1);
    let directory = LocalDirectory {
        setup: w.setup.clone(),
        down: w.directory_down.clone(),
    };
    let config = NodeConfig {
        index: NodeIndex::new(1).unwrap(),
        reencrypt_rate: 1.0,
        content_key_rate: 1.0,
    };
    let e = Node::new(
        w.node_stores[0].clone(),
        w.gate.clone(),
        directory,
        share,
        config,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&e, DomainError::Malformed(m) if m.contains("share 2 but this is node 1")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_key_proof_alone_enrols_a_new_device_of_an_enrolled_user() {
    let w = world();
    let alice = w.enroll("alice", Role::Patient).await;
    let ok = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "alice", "phone"),
        )
        .await
        .unwrap();
    // The registered role, though the request named none.
    assert_eq!(
        ok.identity,
        Identity::user(TD, Role::Patient, "alice").unwrap()
    );
    assert_eq!(ok.device, "phone");
    let der = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(ok.certificate_pem.as_bytes()).unwrap()
    };
    assert_eq!(sesphr_mesh::trust::device(&der).as_deref(), Some("phone"));
    // No name: the next free device-N.
    let next = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "alice", ""),
        )
        .await
        .unwrap();
    assert_eq!(next.device, "device-2");
    let names: Vec<String> = w
        .setup
        .list_devices(&patient("alice"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["device-1", "phone", "device-2"]);
    // A name in use is refused.
    let e = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "alice", "phone"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");

    // Someone else's proof, a proof over another CSR, or another id.
    let mallory = Keys::new();
    let mut forged = alice.reenrollment("", "alice", "x1");
    forged.pre_public_key.clear();
    forged.verifying_key.clear();
    forged.key_proof = mallory
        .master
        .signing_key()
        .sign_key_proof(TD, "alice", &forged.csr_der)
        .unwrap()
        .to_vec();
    let e = w
        .setup
        .enroll(&Caller::Anonymous, None, forged)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "does not verify"), "{e:?}");
    let mut replayed = alice.reenrollment("", "alice", "x2");
    replayed.csr_der = sesphr_mesh::pki::make_csr().unwrap().0;
    let e = w
        .setup
        .enroll(&Caller::Anonymous, None, replayed)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "does not verify"), "{e:?}");
    let e = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "nobody", "x3"),
        )
        .await
        .unwrap_err();
    // An id nobody holds, or a role other than the registered one: the
    // caller hears the same as for a bad proof (the audit entry says why).
    assert_eq!(e.to_string(), crate::setup::KEY_PROOF_REFUSED);
    let mut as_doctor = alice.reenrollment("", "alice", "x4");
    as_doctor.role = Some(Role::Doctor);
    let e = w
        .setup
        .enroll(&Caller::Anonymous, None, as_doctor)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), crate::setup::KEY_PROOF_REFUSED);
    assert!(
        w.gate
            .audits_of(Rpc::Enroll)
            .iter()
            .any(|a| a.detail.contains("enrolled as patient"))
    );
    // Every attempt is audited, with alice as subject.
    let enrolments = w.gate.audits_of(Rpc::Enroll);
    assert!(enrolments.iter().any(|a| a.owner_id == "alice"
        && a.outcome == Outcome::Ok
        && a.detail.contains("re-enrolled by key proof")
        && a.detail.contains("device phone")));
    assert!(
        enrolments
            .iter()
            .filter(|a| a.outcome == Outcome::Denied && a.owner_id == "alice")
            .count()
            >= 4
    );
}

#[tokio::test]
async fn a_removed_device_is_revoked_and_renews_nothing() {
    let w = world();
    let alice = w.enroll("alice", Role::Patient).await;
    let phone = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "alice", "phone"),
        )
        .await
        .unwrap();
    let me = patient("alice");
    // A device cannot remove itself (it would lock its user out of it).
    let e = w
        .setup
        .remove_device(&me, Some("phone"), "phone")
        .await
        .unwrap_err();
    assert!(denied_with(&e, "the one this call comes from"), "{e:?}");
    // Nor a device nobody has, nor a malformed name.
    assert!(matches!(
        w.setup.remove_device(&me, Some("device-1"), "tablet").await,
        Err(DomainError::Unknown(_))
    ));
    assert!(matches!(
        w.setup.remove_device(&me, Some("device-1"), "Ph/one").await,
        Err(DomainError::Malformed(_))
    ));
    // AccessPolicy unreachable: the removal fails (and is kept), a retry
    // sends the revocation.
    w.gate.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        w.setup.remove_device(&me, Some("device-1"), "phone").await,
        Err(DomainError::Unavailable(_))
    ));
    w.gate.down.store(false, Ordering::SeqCst);
    let until = w
        .setup
        .remove_device(&me, Some("device-1"), "phone")
        .await
        .unwrap();
    assert_eq!(until, phone.not_after);
    assert_eq!(
        *w.gate.revoked.lock().unwrap(),
        [("alice".to_string(), "phone".to_string(), phone.not_after)]
    );
    let names: Vec<String> = w
        .setup
        .list_devices(&me)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["device-1"]);
    // Its certificate renews nothing, and its name is not given out again.
    let csr = sesphr_mesh::pki::make_csr().unwrap().0;
    let e = w
        .setup
        .renew(
            &me,
            Some((sesphr_mesh::unix_now(), "phone".into())),
            csr.clone(),
        )
        .await
        .unwrap_err();
    assert!(denied_with(&e, "was removed"), "{e:?}");
    let e = w
        .setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "alice", "phone"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    // The other device renews; a superseded certificate of it does not.
    let old = w.setup_store.user("alice").unwrap().unwrap();
    let issued = old.devices[0].issued_at;
    w.setup
        .renew(&me, Some((issued, "device-1".into())), csr.clone())
        .await
        .unwrap();
    let e = w
        .setup
        .renew(&me, Some((issued - 1_000, "device-1".into())), csr)
        .await
        .unwrap_err();
    assert!(denied_with(&e, "superseded"), "{e:?}");
    assert!(
        w.gate
            .audits_of(Rpc::RemoveDevice)
            .iter()
            .any(|a| a.owner_id == "alice" && a.outcome == Outcome::Ok)
    );
}

#[tokio::test]
async fn recovery_shares_go_to_their_trustee_only() {
    let w = world();
    w.enroll("alice", Role::Patient).await;
    for id in ["bob", "carol", "dave"] {
        w.enroll(id, Role::Friend).await;
    }
    let alice = patient("alice");
    let share = |t: &str| (t.to_string(), format!("sealed for {t}").into_bytes());
    // The bounds: 2 <= t <= n <= 10, distinct enrolled trustees, not herself.
    for (t, shares) in [
        (1, vec![share("bob"), share("carol")]),
        (3, vec![share("bob"), share("carol")]),
        (2, vec![share("bob"), share("bob")]),
        (2, vec![share("bob"), share("alice")]),
        (2, vec![share("bob"), (String::from("carol"), Vec::new())]),
        (2, (0..11).map(|i| share(&format!("t{i}"))).collect()),
    ] {
        let e = w.setup.set_recovery(&alice, t, shares).await.unwrap_err();
        assert!(matches!(e, DomainError::Malformed(_)), "{e:?}");
    }
    let e = w
        .setup
        .set_recovery(&alice, 2, vec![share("bob"), share("ghost")])
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::Conflict(_)), "{e:?}");
    assert!(matches!(
        w.setup.get_recovery(&alice).await,
        Err(DomainError::Unknown(_))
    ));
    w.setup
        .set_recovery(&alice, 2, vec![share("carol"), share("bob"), share("dave")])
        .await
        .unwrap();
    let setup = w.setup.get_recovery(&alice).await.unwrap();
    assert_eq!(setup.threshold, 2);
    let fp = "ab".repeat(32);
    let bob = Caller::Practitioner {
        role: Role::Friend,
        id: uid("bob"),
    };
    let (_, got) = w
        .setup
        .get_recovery_share(&bob, &uid("alice"), &fp)
        .await
        .unwrap();
    assert_eq!(got, b"sealed for bob");
    // Not a trustee, or no setup: the same answer.
    let mallory = patient("mallory");
    let not_trustee = w
        .setup
        .get_recovery_share(&mallory, &uid("alice"), &fp)
        .await
        .unwrap_err();
    let no_setup = w
        .setup
        .get_recovery_share(&mallory, &uid("bob"), &fp)
        .await
        .unwrap_err();
    assert!(matches!(not_trustee, DomainError::Unknown(_)));
    assert!(matches!(no_setup, DomainError::Unknown(_)));
    assert!(matches!(
        w.setup.get_recovery_share(&bob, &uid("alice"), "xyz").await,
        Err(DomainError::Malformed(_))
    ));
    // The owner sees every release (and every probe) in her entries.
    let releases = w.gate.audits_of(Rpc::GetRecoveryShare);
    assert!(
        releases
            .iter()
            .any(|a| a.owner_id == "alice" && a.outcome == Outcome::Ok && a.detail.contains(&fp))
    );
    assert!(
        releases
            .iter()
            .any(|a| a.owner_id == "alice" && a.outcome == Outcome::Denied)
    );
}

#[tokio::test]
async fn refused_key_proofs_use_up_no_reenrolment() {
    let w = world();
    let alice = w.enroll("alice", Role::Patient).await;
    let mallory = Keys::new();
    // Far more junk than the mesh-wide rate (600 a minute here) allows.
    for i in 0..700 {
        let mut junk = alice.reenrollment("", "alice", "");
        junk.key_proof = if i % 2 == 0 {
            vec![1]
        } else {
            mallory
                .master
                .signing_key()
                .sign_key_proof(TD, "alice", &junk.csr_der)
                .unwrap()
                .to_vec()
        };
        let e = w
            .setup
            .enroll(&Caller::Anonymous, None, junk)
            .await
            .unwrap_err();
        assert!(denied_with(&e, "does not verify"), "{e:?}");
    }
    w.setup
        .enroll(
            &Caller::Anonymous,
            None,
            alice.reenrollment("", "alice", "phone"),
        )
        .await
        .unwrap();
}

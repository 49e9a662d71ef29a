//! A state-machine model of the SeSPHR sharing protocol — grant, revoke,
//! rotate, upload, read (GetRecord + threshold ReEncrypt), enrol,
//! deactivate, audit and trustee recovery — checked exhaustively with
//! [`stateright`].
//!
//! Cryptography is symbolic: a party *decrypts* a record when it holds the
//! ciphertext and the right combination of key material — the master secret,
//! or at least `t` capsule fragments / kfrag shares of distinct SRS nodes for
//! that record's (partition, epoch) made for a grantee whose secret key it
//! also holds. `docs/model.md` maps every property to the code it stands for
//! and says what is not modelled.
//!
//! One partition is modelled (partitions have independent keys), one patient
//! owns it, and two grantees exist: an honest one ([`DOCTOR`]) and one the
//! adversary corrupts ([`FRIEND`]); the two are interchangeable in the model,
//! so fixing which one is corrupt loses nothing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path, Property};

/// The honest grantee (a public-domain practitioner).
pub const DOCTOR: usize = 0;
/// The grantee the adversary corrupts (a private-domain friend). It keeps
/// everything it ever obtained, including after revocation.
pub const FRIEND: usize = 1;
/// Number of grantees in the model.
pub const GRANTEES: usize = 2;
/// Most SRS nodes a configuration may have.
pub const MAX_NODES: usize = 3;
/// Most records a bound may allow.
pub const MAX_RECORDS: usize = 4;
/// Most key epochs a bound may allow (epochs `0..MAX_EPOCHS`).
pub const MAX_EPOCHS: usize = 4;
/// Trustees holding shares of the patient's master secret.
pub const TRUSTEES: u8 = 3;
/// Trustee shares needed to recover the master secret.
pub const TRUSTEE_THRESHOLD: u8 = 2;

const GRANTEE_NAMES: [&str; GRANTEES] = ["doctor", "friend"];

/// A deliberately broken variant of the protocol. Each makes the checker find
/// a counterexample to at least one property (see `docs/model.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// SRS nodes re-encrypt without asking AccessPolicy (only kfrag presence).
    SrsSkipsPolicy,
    /// CloudStorage does not pass the record's creation time to the check.
    CloudIgnoresNotBefore,
    /// A grant with `not_before` does not rotate the partition first.
    NotBeforeWithoutRotation,
    /// Rotation issues kfrags to every grantee ever granted (a lying
    /// AccessPolicy list), revoked ones included.
    RotateToRevoked,
    /// Revocation forgets to delete the kfrags at the last SRS node.
    RevokeForgetsNode,
    /// The grantee decapsulates without verifying cfrags.
    GranteeSkipsVerify,
    /// The client sends the record (not only its capsule) to ReEncrypt.
    ClientSendsRecordToSrs,
    /// A successful GetRecord check appends no audit entry.
    AuditSkippedOnRead,
    /// VerifyAudit is called without the pinned head (`expected_seq/hash`).
    VerifyIgnoresPin,
    /// Services ignore the deny state of a deactivated user.
    DenyIgnored,
    /// Master-secret recovery accepts one trustee share fewer than needed.
    RecoveryOffByOne,
    /// Decapsulation accepts `t − 1` cfrags.
    ThresholdOffByOne,
    /// AccessPolicy treats a grant as live at the instant it expires.
    ExpiryOffByOne,
    /// A grant stores kfrags at one SRS node only.
    GrantToOneNode,
}

/// Who runs where and whom the adversary controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Number of SRS nodes, `1..=MAX_NODES`.
    pub nodes: u8,
    /// Cfrags (kfrag shares) needed to decapsulate.
    pub threshold: u8,
    /// SRS nodes the adversary controls (nodes `0..corrupt_nodes`): they
    /// hand it every kfrag they ever receive and ignore policy.
    pub corrupt_nodes: u8,
    /// Whether CloudStorage gives every ciphertext to the adversary.
    pub corrupt_cloud: bool,
    /// The deliberate bug, if any.
    pub mutation: Option<Mutation>,
}

impl Config {
    /// The mesh as `sesphrd dev` and the prod overlay run it: 3 SRS nodes,
    /// threshold 2, the adversary holding `t − 1 = 1` node, the cloud and
    /// the friend.
    pub fn target() -> Self {
        Self {
            nodes: 3,
            threshold: 2,
            corrupt_nodes: 1,
            corrupt_cloud: true,
            mutation: None,
        }
    }

    /// 2-of-2 SRS nodes, one corrupt.
    pub fn two_of_two() -> Self {
        Self {
            nodes: 2,
            threshold: 2,
            ..Self::target()
        }
    }

    /// A 1-of-1 mesh (`sesphrd dev --srs-nodes 1`, or a migrated
    /// single-SRS directory), with the collusion `docs/design.md` documents
    /// for it (that one node + a former grantee).
    pub fn current_code() -> Self {
        Self {
            nodes: 1,
            threshold: 1,
            corrupt_nodes: 1,
            corrupt_cloud: true,
            mutation: None,
        }
    }

    /// This configuration with `m` applied.
    pub fn with(self, m: Mutation) -> Self {
        Self {
            mutation: Some(m),
            ..self
        }
    }
}

/// How far the checker explores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bound {
    /// Actions per path.
    pub steps: u8,
    /// Logical clock ticks (time runs `0..=ticks`).
    pub ticks: u8,
    /// Records uploaded.
    pub records: u8,
    /// Key epochs (`0..epochs`), so at most `epochs − 1` rotations.
    pub epochs: u8,
}

impl Bound {
    /// The bound `cargo test` checks.
    pub fn small() -> Self {
        Self {
            steps: 8,
            ticks: 2,
            records: 3,
            epochs: 3,
        }
    }

    /// The bound behind `SESPHR_MODEL_BOUND=large`.
    pub fn large() -> Self {
        Self {
            steps: 10,
            ticks: 3,
            records: 3,
            epochs: 4,
        }
    }

    /// [`Bound::large`] if `SESPHR_MODEL_BOUND=large`, else [`Bound::small`].
    pub fn from_env() -> Self {
        match std::env::var("SESPHR_MODEL_BOUND").as_deref() {
            Ok("large") => Self::large(),
            _ => Self::small(),
        }
    }
}

/// A grant as AccessPolicy stores it (one partition; `epoch_max` open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    /// First epoch covered.
    pub epoch_min: u8,
    /// Logical time before which nothing is allowed and records created
    /// earlier are withheld (0 = none).
    pub not_before: u8,
    /// Checks at or after this time are denied.
    pub expires_at: Option<u8>,
}

/// The options of a grant action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKind {
    /// `--not-before now`: rotate first, kfrags for the new epoch only.
    pub not_before: bool,
    /// Expires one tick from now.
    pub expires: bool,
}

/// A stored record: its key epoch and creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// The key epoch it was encrypted under.
    pub epoch: u8,
    /// Logical creation time.
    pub created: u8,
}

/// One step of the protocol or of the adversary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The clock advances.
    Tick,
    /// A grantee enrols at the SRS (its public key enters the directory).
    Enrol(usize),
    /// The patient grants the partition to a grantee.
    Grant(usize, GrantKind),
    /// The patient revokes: AccessPolicy drops the grant, then a delete of
    /// the grantee's kfrags is sent to every node.
    Revoke(usize),
    /// A node that was unreachable receives its kfrag delete (in any order).
    DeliverDelete(usize, usize),
    /// The patient rotates the partition to a new epoch.
    Rotate,
    /// The patient uploads a record in the current epoch at the current time.
    Upload,
    /// The honest grantee reads record `r`: GetRecord, ReEncrypt at every
    /// node, verify, decapsulate.
    Read(usize),
    /// An operator deactivates a user: AccessPolicy holds its deny state.
    Disable(usize),
    /// The patient pins the audit head (remembers `seq`/`hash`).
    PinHead,
    /// An AccessPolicy insider rewrites the tail of the audit chain without
    /// its last entry, consistently.
    TamperAudit,
    /// The adversary corrupts one more trustee (up to `t_r − 1`).
    CorruptTrustee,
}

/// The whole system's state plus history variables the properties read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    steps: u8,
    now: u8,
    epoch: u8,
    enrolled: u8,
    grants: [Option<Grant>; GRANTEES],
    ever_granted: u8,
    /// The epoch current at a grantee's last revocation (cleared on re-grant).
    revoked_at: [Option<u8>; GRANTEES],
    disabled: u8,
    /// `kfrags[node][grantee]`: bit `e` = holds kfrags for epoch `e`.
    kfrags: [[u8; GRANTEES]; MAX_NODES],
    /// `pending_delete[node]`: bit `g` = a delete for grantee `g` in flight.
    pending_delete: [u8; MAX_NODES],
    records: Vec<Record>,
    /// Audit entries `(grantee, record)` as AccessPolicy serves them.
    audit: Vec<(u8, u8)>,
    /// Bit `g * MAX_RECORDS + r`: a read of `r` by `g` was ever appended.
    audited: u16,
    /// Bit `g * MAX_RECORDS + r`: `g` completed a read of `r`.
    reads: u16,
    pin: Option<Vec<(u8, u8)>>,
    tampered: bool,
    trustees_corrupt: u8,
    /// Adversary's material: kfrag shares by epoch (node bits), ciphertexts
    /// (record bits), cfrags by record (node bits) for the friend.
    adv_kfrags: [u8; MAX_EPOCHS],
    adv_ciphertexts: u8,
    adv_cfrags: [u8; MAX_RECORDS],
    /// Records each grantee (with its coalition) has decrypted.
    knows: [u8; GRANTEES],
    /// Records each grantee was entitled to at some point.
    entitled_ever: [u8; GRANTEES],
    wrong_key_accepted: bool,
    srs_saw_record: bool,
    gained_while_expired: bool,
    gained_while_disabled: bool,
    gained_before_not_before: bool,
    honest_read_completed: bool,
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

fn bit(i: usize) -> u8 {
    1 << i
}

fn rbit(g: usize, r: usize) -> u16 {
    1 << (g * MAX_RECORDS + r)
}

/// The protocol model for one configuration and bound.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// Nodes, threshold, adversary, mutation.
    pub config: Config,
    /// Exploration bound.
    pub bound: Bound,
}

impl Protocol {
    /// A model of `config` explored to `bound`.
    pub fn new(config: Config, bound: Bound) -> Self {
        assert!((1..=MAX_NODES as u8).contains(&config.nodes));
        assert!(config.threshold >= 1 && config.threshold <= config.nodes);
        assert!(config.corrupt_nodes <= config.nodes);
        assert!(bound.records as usize <= MAX_RECORDS && bound.epochs as usize <= MAX_EPOCHS);
        Self { config, bound }
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.config.mutation == Some(m)
    }

    fn nodes(&self) -> usize {
        self.config.nodes as usize
    }

    fn corrupt(&self, node: usize) -> bool {
        node < self.config.corrupt_nodes as usize
    }

    /// Cfrags a grantee's decapsulation needs (as implemented).
    fn threshold(&self) -> u32 {
        let t = u32::from(self.config.threshold);
        if self.mutated(Mutation::ThresholdOffByOne) {
            t.saturating_sub(1).max(1)
        } else {
            t
        }
    }

    /// Trustee shares the recovery accepts (as implemented).
    fn recovery_threshold(&self) -> u8 {
        if self.mutated(Mutation::RecoveryOffByOne) {
            TRUSTEE_THRESHOLD - 1
        } else {
            TRUSTEE_THRESHOLD
        }
    }

    /// What the design says a grantee may see: a live grant covering the
    /// record's epoch and creation time, and no deny state.
    pub fn entitled(&self, s: &State, g: usize, r: usize) -> bool {
        let Some(gr) = s.grants[g] else { return false };
        let rec = s.records[r];
        s.disabled & bit(g) == 0
            && s.now >= gr.not_before
            && gr.expires_at.is_none_or(|e| s.now < e)
            && rec.epoch >= gr.epoch_min
            && rec.created >= gr.not_before
    }

    /// `AccessPolicy.Check` as implemented (`evaluate`): `created` is the
    /// record's creation time when the asking service knows it.
    fn policy_allows(&self, s: &State, g: usize, epoch: u8, created: Option<u8>) -> bool {
        let Some(gr) = s.grants[g] else { return false };
        if s.disabled & bit(g) != 0 && !self.mutated(Mutation::DenyIgnored) {
            return false;
        }
        if s.now < gr.not_before {
            return false;
        }
        if let Some(e) = gr.expires_at {
            let expired = if self.mutated(Mutation::ExpiryOffByOne) {
                s.now > e
            } else {
                s.now >= e
            };
            if expired {
                return false;
            }
        }
        epoch >= gr.epoch_min && created.is_none_or(|c| c >= gr.not_before)
    }

    /// CloudStorage's GetRecord for grantee `g`.
    fn cloud_serves(&self, s: &State, g: usize, r: usize) -> bool {
        let rec = s.records[r];
        let created = if self.mutated(Mutation::CloudIgnoresNotBefore) {
            None
        } else {
            Some(rec.created)
        };
        self.policy_allows(s, g, rec.epoch, created)
    }

    /// An honest SRS node's ReEncrypt for grantee `g` on `epoch`: it holds
    /// kfrags and AccessPolicy allows (the SRS knows no creation time).
    fn node_reencrypts(&self, s: &State, node: usize, g: usize, epoch: u8) -> bool {
        s.kfrags[node][g] & bit(epoch as usize) != 0
            && (self.mutated(Mutation::SrsSkipsPolicy) || self.policy_allows(s, g, epoch, None))
    }

    fn put_kfrags(&self, s: &mut State, g: usize, epoch: u8) {
        for node in 0..self.nodes() {
            if self.mutated(Mutation::GrantToOneNode) && node + 1 != self.nodes() {
                continue;
            }
            s.kfrags[node][g] |= bit(epoch as usize);
        }
    }

    fn rotate(&self, s: &mut State) {
        s.epoch += 1;
        let e = s.epoch;
        for g in 0..GRANTEES {
            let listed = s.grants[g].is_some()
                || (self.mutated(Mutation::RotateToRevoked) && s.ever_granted & bit(g) != 0);
            if listed {
                self.put_kfrags(s, g, e);
            }
        }
    }

    /// Records a grantee (or its coalition) newly decrypting `r`, and the
    /// history flags that depend on the moment.
    fn gain(&self, s: &mut State, g: usize, r: usize) {
        if s.knows[g] & bit(r) != 0 {
            return;
        }
        s.knows[g] |= bit(r);
        if s.disabled & bit(g) != 0 {
            s.gained_while_disabled = true;
        }
        if let Some(gr) = s.grants[g] {
            if gr.expires_at.is_some_and(|e| s.now >= e) {
                s.gained_while_expired = true;
            }
            if s.records[r].created < gr.not_before && s.entitled_ever[g] & bit(r) == 0 {
                s.gained_before_not_before = true;
            }
        }
    }

    /// After every step: entitlement history, what the corrupt parties leak,
    /// and everything the adversary can decrypt with the union of it.
    fn observe(&self, s: &mut State) {
        for g in 0..GRANTEES {
            for r in 0..s.records.len() {
                if self.entitled(s, g, r) {
                    s.entitled_ever[g] |= bit(r);
                }
            }
        }
        for node in 0..self.nodes() {
            if self.corrupt(node) {
                for e in 0..MAX_EPOCHS {
                    if s.kfrags[node][FRIEND] & bit(e) != 0 {
                        s.adv_kfrags[e] |= bit(node);
                    }
                }
            }
        }
        let master = s.trustees_corrupt >= self.recovery_threshold();
        for r in 0..s.records.len() {
            if self.config.corrupt_cloud || self.cloud_serves(s, FRIEND, r) {
                s.adv_ciphertexts |= bit(r);
            }
            if s.adv_ciphertexts & bit(r) == 0 {
                continue;
            }
            let epoch = s.records[r].epoch;
            for node in 0..self.nodes() {
                if !self.corrupt(node) && self.node_reencrypts(s, node, FRIEND, epoch) {
                    s.adv_cfrags[r] |= bit(node);
                }
            }
            let shares = (s.adv_cfrags[r] | s.adv_kfrags[epoch as usize]).count_ones();
            if master || shares >= self.threshold() {
                self.gain(s, FRIEND, r);
            }
        }
    }

    fn read(&self, s: &mut State, r: usize) {
        let g = DOCTOR;
        if !self.cloud_serves(s, g, r) {
            return;
        }
        if !self.mutated(Mutation::AuditSkippedOnRead) {
            s.audit.push((g as u8, r as u8));
            s.audited |= rbit(g, r);
        }
        let epoch = s.records[r].epoch;
        // Each node's answer, in node order: Some(valid?) or None (refused).
        let mut answers = Vec::new();
        for node in 0..self.nodes() {
            if self.mutated(Mutation::ClientSendsRecordToSrs) {
                s.srs_saw_record = true;
                if self.corrupt(node) {
                    s.adv_ciphertexts |= bit(r);
                }
            }
            if self.corrupt(node) {
                // A corrupt node answers with garbage to honest grantees.
                answers.push(false);
            } else if self.node_reencrypts(s, node, g, epoch) {
                answers.push(true);
            }
        }
        let t = self.threshold() as usize;
        let (ok, wrong) = if self.mutated(Mutation::GranteeSkipsVerify) {
            let used = &answers[..answers.len().min(t)];
            (used.len() >= t, used.iter().any(|v| !v))
        } else {
            (answers.iter().filter(|v| **v).count() >= t, false)
        };
        if !ok {
            return;
        }
        if wrong {
            s.wrong_key_accepted = true;
            return;
        }
        s.reads |= rbit(g, r);
        if s.grants[g].is_some() && self.policy_allows(s, g, epoch, None) {
            s.honest_read_completed = true;
        }
        self.gain(s, g, r);
    }

    /// Whether the patient's `VerifyAudit` reports a problem.
    pub fn verify_detects(&self, s: &State) -> bool {
        if self.mutated(Mutation::VerifyIgnoresPin) {
            // The chain itself was rewritten consistently.
            return false;
        }
        match &s.pin {
            Some(p) => !s.audit.starts_with(p),
            None => false,
        }
    }

    /// Checks this model exhaustively (BFS) and returns the outcome.
    pub fn check(self) -> Outcome {
        let started = Instant::now();
        let checker = self.clone().checker().threads(threads()).spawn_bfs().join();
        let mut discoveries = Vec::new();
        for p in self.properties() {
            if let Some(path) = checker.discovery(p.name) {
                let trace = self.shortest(p.name).unwrap_or_else(|| self.trace(&path));
                discoveries.push((p.name, trace));
            }
        }
        Outcome {
            config: self.config,
            bound: self.bound,
            unique_states: checker.unique_state_count(),
            states: checker.state_count(),
            max_depth: checker.max_depth(),
            elapsed: started.elapsed(),
            discoveries,
        }
    }

    /// The trace of a shortest discovery for `name`, by iterative deepening
    /// on one thread (the parallel BFS promises neither shortest nor the
    /// same path twice).
    pub fn shortest(&self, name: &'static str) -> Option<String> {
        (1..=self.bound.steps).find_map(|steps| {
            let model = Self {
                bound: Bound {
                    steps,
                    ..self.bound
                },
                ..self.clone()
            };
            let checker = model
                .clone()
                .checker()
                .threads(1)
                .finish_when(HasDiscoveries::AnyOf([name].into()))
                .spawn_bfs()
                .join();
            checker.discovery(name).map(|path| model.trace(&path))
        })
    }

    /// Whether running `actions` from the initial state is possible and ends
    /// in a state that violates the `always` property `name`; the trace is
    /// returned for printing.
    pub fn violated_by(&self, name: &str, actions: &[Action]) -> Option<String> {
        let init = self.init_states().remove(0);
        let path = Path::from_actions(self, init, actions)?;
        let property = self.properties().into_iter().find(|p| p.name == name)?;
        (!(property.condition)(self, path.last_state())).then(|| self.trace(&path))
    }

    /// A readable trace of a discovered path.
    pub fn trace(&self, path: &Path<State, Action>) -> String {
        let mut out = String::new();
        for (i, (s, a)) in path.clone().into_vec().into_iter().enumerate() {
            let _ = writeln!(
                out,
                "  {i:>2}. t={} epoch={} grants={:?} records={:?} knows(doctor={:#05b}, friend={:#05b})",
                s.now, s.epoch, s.grants, s.records, s.knows[DOCTOR], s.knows[FRIEND]
            );
            if let Some(a) = a {
                let _ = writeln!(out, "      -> {}", self.describe(&s, a));
            }
        }
        out
    }

    fn describe(&self, s: &State, a: Action) -> String {
        match a {
            Action::Tick => "clock ticks".into(),
            Action::Enrol(g) => format!("{} enrols", GRANTEE_NAMES[g]),
            Action::Grant(g, k) => format!(
                "patient grants {}{}{}",
                GRANTEE_NAMES[g],
                if k.not_before {
                    " with not_before=now"
                } else {
                    ""
                },
                if k.expires {
                    ", expiring next tick"
                } else {
                    ""
                }
            ),
            Action::Revoke(g) => format!(
                "patient revokes {} (AccessPolicy now, kfrag deletes in flight)",
                GRANTEE_NAMES[g]
            ),
            Action::DeliverDelete(n, g) => {
                format!(
                    "SRS node {n} receives the delete of {}'s kfrags",
                    GRANTEE_NAMES[g]
                )
            }
            Action::Rotate => format!("patient rotates to epoch {}", s.epoch + 1),
            Action::Upload => format!(
                "patient uploads record {} (epoch {}, t={})",
                s.records.len(),
                s.epoch,
                s.now
            ),
            Action::Read(r) => format!("doctor reads record {r}"),
            Action::Disable(g) => format!("{} is deactivated", GRANTEE_NAMES[g]),
            Action::PinHead => format!("patient pins the audit head (seq {})", s.audit.len()),
            Action::TamperAudit => "insider drops the last audit entry and re-chains".into(),
            Action::CorruptTrustee => "adversary corrupts a trustee".into(),
        }
    }
}

/// The result of one exhaustive check.
#[derive(Debug)]
pub struct Outcome {
    /// The configuration checked.
    pub config: Config,
    /// The bound explored.
    pub bound: Bound,
    /// Distinct states explored.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub states: usize,
    /// Deepest path explored.
    pub max_depth: usize,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// `(property, trace)` for every property with a discovery: a
    /// counterexample for `always`, an example for `sometimes`.
    pub discoveries: Vec<(&'static str, String)>,
}

impl Outcome {
    /// The trace found for `property`, if any.
    pub fn discovery(&self, property: &str) -> Option<&str> {
        self.discoveries
            .iter()
            .find(|(n, _)| *n == property)
            .map(|(_, t)| t.as_str())
    }

    /// One line: configuration, bound, states, time.
    pub fn summary(&self) -> String {
        format!(
            "n={} t={} corrupt_nodes={} cloud_corrupt={} mutation={:?} | bound {:?} | {} unique states ({} generated, depth {}) in {:.2?}",
            self.config.nodes,
            self.config.threshold,
            self.config.corrupt_nodes,
            self.config.corrupt_cloud,
            self.config.mutation,
            self.bound,
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed
        )
    }
}

/// Property names, as `docs/model.md` lists them.
pub mod names {
    /// (1)
    pub const NO_DECRYPT_WITHOUT_GRANT: &str = "no_decrypt_without_live_grant";
    /// (2)
    pub const REVOKE_ROTATE: &str = "revoked_and_rotated_cannot_decrypt_later_records";
    /// (3)
    pub const NOT_BEFORE: &str = "not_before_hides_older_records";
    /// (4)
    pub const EXPIRED: &str = "expired_grant_yields_nothing";
    /// (5)
    pub const WRONG_KEY: &str = "honest_grantee_never_accepts_wrong_key";
    /// (6)
    pub const NO_DATA_AT_SRS: &str = "no_record_data_at_srs";
    /// (7a)
    pub const AUDITED: &str = "every_read_is_audited";
    /// (7b)
    pub const PIN: &str = "pinned_head_detects_removal";
    /// (8)
    pub const DISABLED: &str = "disabled_user_obtains_nothing";
    /// (9)
    pub const RECOVERY: &str = "recovery_needs_threshold_trustees";
    /// (10)
    pub const REVOKE_FANOUT: &str = "revoke_reaches_every_node";
    /// Liveness (sometimes).
    pub const LIVENESS: &str = "granted_read_completes";
    /// Every `always` property.
    pub const SAFETY: [&str; 11] = [
        NO_DECRYPT_WITHOUT_GRANT,
        REVOKE_ROTATE,
        NOT_BEFORE,
        EXPIRED,
        WRONG_KEY,
        NO_DATA_AT_SRS,
        AUDITED,
        PIN,
        DISABLED,
        RECOVERY,
        REVOKE_FANOUT,
    ];
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut s = State {
            steps: 0,
            now: 0,
            epoch: 0,
            enrolled: 0,
            grants: [None; GRANTEES],
            ever_granted: 0,
            revoked_at: [None; GRANTEES],
            disabled: 0,
            kfrags: [[0; GRANTEES]; MAX_NODES],
            pending_delete: [0; MAX_NODES],
            records: Vec::new(),
            audit: Vec::new(),
            audited: 0,
            reads: 0,
            pin: None,
            tampered: false,
            trustees_corrupt: 0,
            adv_kfrags: [0; MAX_EPOCHS],
            adv_ciphertexts: 0,
            adv_cfrags: [0; MAX_RECORDS],
            knows: [0; GRANTEES],
            entitled_ever: [0; GRANTEES],
            wrong_key_accepted: false,
            srs_saw_record: false,
            gained_while_expired: false,
            gained_while_disabled: false,
            gained_before_not_before: false,
            honest_read_completed: false,
        };
        self.observe(&mut s);
        vec![s]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.steps >= self.bound.steps {
            return;
        }
        let b = self.bound;
        if s.now < b.ticks {
            actions.push(Action::Tick);
        }
        let can_rotate = s.epoch + 1 < b.epochs;
        for g in 0..GRANTEES {
            if s.enrolled & bit(g) == 0 {
                actions.push(Action::Enrol(g));
                continue;
            }
            if s.grants[g].is_none() {
                for not_before in [false, true] {
                    for expires in [false, true] {
                        let rotates =
                            not_before && !self.mutated(Mutation::NotBeforeWithoutRotation);
                        if rotates && !can_rotate {
                            continue;
                        }
                        actions.push(Action::Grant(
                            g,
                            GrantKind {
                                not_before,
                                expires,
                            },
                        ));
                    }
                }
            } else {
                actions.push(Action::Revoke(g));
            }
            if s.disabled & bit(g) == 0 {
                actions.push(Action::Disable(g));
            }
        }
        for node in 0..self.nodes() {
            for g in 0..GRANTEES {
                if s.pending_delete[node] & bit(g) != 0 {
                    actions.push(Action::DeliverDelete(node, g));
                }
            }
        }
        if can_rotate {
            actions.push(Action::Rotate);
        }
        if s.records.len() < b.records as usize {
            actions.push(Action::Upload);
        }
        for r in 0..s.records.len() {
            if self.cloud_serves(s, DOCTOR, r) {
                actions.push(Action::Read(r));
            }
        }
        if s.pin.is_none() && !s.audit.is_empty() {
            actions.push(Action::PinHead);
        }
        if !s.tampered && !s.audit.is_empty() {
            actions.push(Action::TamperAudit);
        }
        if s.trustees_corrupt < TRUSTEE_THRESHOLD - 1 {
            actions.push(Action::CorruptTrustee);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        s.steps += 1;
        match action {
            Action::Tick => s.now += 1,
            Action::Enrol(g) => s.enrolled |= bit(g),
            Action::Grant(g, kind) => {
                let rotates = kind.not_before && !self.mutated(Mutation::NotBeforeWithoutRotation);
                if rotates {
                    self.rotate(&mut s);
                }
                let epoch_min = if kind.not_before { s.epoch } else { 0 };
                for e in epoch_min..=s.epoch {
                    self.put_kfrags(&mut s, g, e);
                }
                s.grants[g] = Some(Grant {
                    epoch_min,
                    not_before: if kind.not_before { s.now } else { 0 },
                    expires_at: kind.expires.then_some(s.now + 1),
                });
                s.ever_granted |= bit(g);
                s.revoked_at[g] = None;
            }
            Action::Revoke(g) => {
                s.grants[g] = None;
                s.revoked_at[g] = Some(s.epoch);
                for node in 0..self.nodes() {
                    if self.mutated(Mutation::RevokeForgetsNode) && node + 1 == self.nodes() {
                        continue;
                    }
                    s.pending_delete[node] |= bit(g);
                }
            }
            Action::DeliverDelete(node, g) => {
                s.pending_delete[node] &= !bit(g);
                s.kfrags[node][g] = 0;
            }
            Action::Rotate => self.rotate(&mut s),
            Action::Upload => s.records.push(Record {
                epoch: s.epoch,
                created: s.now,
            }),
            Action::Read(r) => self.read(&mut s, r),
            Action::Disable(g) => s.disabled |= bit(g),
            Action::PinHead => s.pin = Some(s.audit.clone()),
            Action::TamperAudit => {
                s.audit.pop();
                s.tampered = true;
            }
            Action::CorruptTrustee => s.trustees_corrupt += 1,
        }
        self.observe(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        use names::*;
        vec![
            Property::always(NO_DECRYPT_WITHOUT_GRANT, |_: &Protocol, s: &State| {
                (0..GRANTEES).all(|g| s.knows[g] & !s.entitled_ever[g] == 0)
            }),
            Property::always(REVOKE_ROTATE, |_: &Protocol, s: &State| {
                (0..GRANTEES).all(|g| match s.revoked_at[g] {
                    Some(e0) => s
                        .records
                        .iter()
                        .enumerate()
                        .all(|(r, rec)| rec.epoch <= e0 || s.knows[g] & bit(r) == 0),
                    None => true,
                })
            }),
            Property::always(NOT_BEFORE, |_: &Protocol, s: &State| {
                !s.gained_before_not_before
            }),
            Property::always(EXPIRED, |_: &Protocol, s: &State| !s.gained_while_expired),
            Property::always(WRONG_KEY, |_: &Protocol, s: &State| !s.wrong_key_accepted),
            Property::always(NO_DATA_AT_SRS, |_: &Protocol, s: &State| !s.srs_saw_record),
            Property::always(AUDITED, |_: &Protocol, s: &State| s.reads & !s.audited == 0),
            Property::always(PIN, |m: &Protocol, s: &State| match &s.pin {
                Some(p) if !s.audit.starts_with(p) => m.verify_detects(s),
                _ => true,
            }),
            Property::always(DISABLED, |_: &Protocol, s: &State| !s.gained_while_disabled),
            Property::always(RECOVERY, |m: &Protocol, s: &State| {
                // The adversary holds at most t_r − 1 shares; the master
                // secret must stay out of reach.
                let recovers = s.trustees_corrupt >= m.recovery_threshold();
                recovers == (s.trustees_corrupt >= TRUSTEE_THRESHOLD)
            }),
            Property::always(REVOKE_FANOUT, |m: &Protocol, s: &State| {
                (0..GRANTEES).all(|g| {
                    s.grants[g].is_some()
                        || s.revoked_at[g].is_none()
                        || (0..m.nodes())
                            .all(|n| s.kfrags[n][g] == 0 || s.pending_delete[n] & bit(g) != 0)
                })
            }),
            Property::sometimes(LIVENESS, |_: &Protocol, s: &State| s.honest_read_completed),
        ]
    }
}

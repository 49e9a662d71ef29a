//! The SRS (Setup and Re-encryption Server), split so that no single
//! server can re-encrypt: the **setup service** ([`setup`]: enrolment, the
//! CA, the one user directory) and **n re-encryption nodes** ([`node`]:
//! each holds share `i` of every grant's kfrags and of the dedup OPRF key,
//! in a store of its own). Nodes learn users' registered keys from the
//! setup service ([`directory`]); both ask AccessPolicy and audit through
//! [`gate`]. The gRPC adapters in [`grpc`] only decode, delegate and map
//! errors.
//!
//! Keys, certificates and kfrags are opaque bytes to the store; the rules
//! modules do the cryptography and the CA signing. Nothing here holds a
//! user's secret key: users generate theirs client-side and register only
//! public keys, and a kfrag share alone cannot decrypt anything.
//!
//! Every write returns only after `Db::flush`, i.e. once it is durable.
//!
//! # Storage layout (sled trees)
//!
//! The setup service uses `users`; a node uses `kfrags` (one kfrag per set:
//! its own share). One store type serves both, so a single-node SRS's
//! database can be split by `sesphrd migrate-srs`.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `users` | user_id | binary user record (see `codec`) |
//! | `invitations` | SHA-256 of the invitation | binary invitation (see `codec`) |
//! | `invitations_by_inviter` | inviter ‖ 0x00 ‖ SHA-256 | empty |
//! | `recovery` | owner user_id | binary trustee recovery setup (see `codec`) |
//! | `kfrags` | owner ‖ 0x00 ‖ partition ‖ 0x00 ‖ grantee ‖ 0x00 ‖ epoch u32 BE | binary kfrag set |
//!
//! Ids never contain 0x00, so `owner ‖ 0x00 ‖ partition ‖ 0x00 ‖ grantee ‖
//! 0x00` is an exact prefix: revoking all epochs of one grant is one scan.

mod codec;
pub mod devices;
pub use sesphr_mesh::directory;
pub mod gate;
pub mod grpc;
pub mod kfrag_cache;
pub mod node;
pub mod pg;
pub mod recovery;
pub mod setup;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sesphr_identity::{Role, validate_partition, validate_user_id};
use sled::Transactional;
use zeroize::Zeroizing;

/// Largest accepted public key (PRE or verifying), in bytes. P-256 points
/// are 33 or 65 bytes; the slack allows other encodings.
pub const MAX_PUBLIC_KEY_LEN: usize = 1024;
/// Largest accepted DER certificate.
pub const MAX_CERTIFICATE_LEN: usize = 64 << 10;
/// Most kfrags in one set (the `n` of a t-of-n sharing).
pub const MAX_KFRAGS: usize = 16;
/// Largest accepted single kfrag.
pub const MAX_KFRAG_LEN: usize = 4096;
/// How long an expired invitation is kept (so its holder is told "expired"
/// or "already used", not "unknown"), in seconds.
pub const INVITATION_RETENTION_SECS: i64 = 7 * 86_400;

/// The shared error vocabulary of the services (`sesphr-domain`).
pub use sesphr_domain::DomainError;

/// An enrolled user: public keys only, plus the certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: String,
    pub role: Role,
    /// Public key others re-encrypt to (delegatee side of PRE).
    pub pre_public_key: Vec<u8>,
    /// Key that verifies this user's kfrag signatures.
    pub verifying_key: Vec<u8>,
    /// The newest certificate issued to any of its devices.
    pub certificate_der: Vec<u8>,
    pub enrolled_at: i64,
    /// Its devices, removed ones included until their certificates expire.
    pub devices: Vec<devices::DeviceRecord>,
}

/// A user's trustee recovery setup: shares of her master secret, each
/// sealed to one trustee (opaque here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRecord {
    pub threshold: u32,
    pub created_at: i64,
    /// (trustee user id, sealed share), sorted by trustee.
    pub shares: Vec<(String, Vec<u8>)>,
}

/// Largest sealed recovery share.
pub const MAX_SEALED_SHARE_LEN: usize = 1024;
/// Most trustees of one user.
pub const MAX_TRUSTEES: usize = 10;

/// An invitation, as stored under its SHA-256 (the invitation itself is
/// never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The one id it admits.
    pub user_id: String,
    /// The one role it admits.
    pub role: Role,
    /// Who issued it (`operator/ops`, `patient/alice`).
    pub issued_by: String,
    pub issued_at: i64,
    pub expires_at: i64,
    /// When it was used; 0 while unused.
    pub used_at: i64,
    /// Whether it re-admits an enrolled user (same keys, new certificate).
    pub reenrollment: bool,
}

/// How many invitations one inviter may hold (patients; operators have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InviteLimits {
    /// Unused and unexpired at a time.
    pub open: usize,
    /// Issued in the last 24 hours, used or not.
    pub per_day: usize,
}

/// What redeeming an invitation does to the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeem {
    /// Enrol a new user (`Exists` if the id is taken).
    Enroll(UserRecord),
    /// Give an enrolled user a new device with a new certificate
    /// (`Unknown` if not enrolled; the device rules of [`devices::add`]).
    Reenroll {
        user_id: String,
        device: devices::DeviceRecord,
        certificate_der: Vec<u8>,
    },
}

/// The re-encryption key fragments from one (owner, partition, epoch) key
/// to one grantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KfragSet {
    /// The partition epoch's public key the kfrags were made from.
    pub delegating_public_key: Vec<u8>,
    pub kfrags: Vec<Vec<u8>>,
    pub stored_at: i64,
}

/// What the SRS keeps: users, kfrag sets and its service secrets. The sled
/// [`SrsStore`] is one backend; another (e.g. PostgreSQL) implements this
/// and passes the same conformance checks (`store_conformance::check`).
///
/// Every write returns only once it is durable. Ids are validated here too
/// (they form keys), so a backend never stores a name that breaks its
/// syntax.
pub trait Store: Send + Sync + 'static {
    /// Enrols a user. A user id is taken for good, whatever the role: a
    /// second enrolment under the same id is `Exists`, so nobody can
    /// replace someone else's public keys. (A redemption without an
    /// invitation: there is one way to take an id.)
    fn register_user(&self, user: UserRecord) -> Result<(), DomainError> {
        let at = user.enrolled_at;
        self.redeem_invitation(None, Redeem::Enroll(user), at)
    }

    /// The user enrolled as `user_id`, if any.
    fn user(&self, user_id: &str) -> Result<Option<UserRecord>, DomainError>;

    /// Changes an enrolled user's record atomically (a renewal, a device
    /// removal): `change` sees the current record and may refuse; it may
    /// run more than once under contention, and only its last run's result
    /// is stored. The user id and keys cannot change. Returns the record as
    /// stored; `Unknown` if the user is not enrolled.
    fn update_user(
        &self,
        user_id: &str,
        change: &mut dyn FnMut(&mut UserRecord) -> Result<(), DomainError>,
    ) -> Result<UserRecord, DomainError>;

    /// Stores `owner_id`'s trustee recovery setup, replacing any earlier.
    fn put_recovery(&self, owner_id: &str, setup: RecoveryRecord) -> Result<(), DomainError>;

    /// `owner_id`'s trustee recovery setup, if any.
    fn recovery(&self, owner_id: &str) -> Result<Option<RecoveryRecord>, DomainError>;

    /// Stores an invitation under its hash, first forgetting the inviter's
    /// invitations that expired more than [`INVITATION_RETENTION_SECS`]
    /// before `now`. With `limits`, refused (`UsedUp`) when the inviter is
    /// at either of them; the count and the insert are atomic.
    fn put_invitation(
        &self,
        hash: [u8; 32],
        invitation: Invitation,
        limits: Option<InviteLimits>,
        now: i64,
    ) -> Result<(), DomainError>;

    /// The invitation stored under `hash`, if any.
    fn invitation(&self, hash: &[u8; 32]) -> Result<Option<Invitation>, DomainError>;

    /// Marks the invitation used at `now` and applies `redeem`, atomically:
    /// `Conflict` if it was used meanwhile (nothing applied), and the
    /// invitation stays unused if `redeem` fails. `None`: self-registration,
    /// `redeem` alone.
    fn redeem_invitation(
        &self,
        hash: Option<&[u8; 32]>,
        redeem: Redeem,
        now: i64,
    ) -> Result<(), DomainError>;

    /// Stores (replacing any previous) kfrags from `owner_id`'s partition
    /// key at `epoch` to `grantee_id`.
    fn put_kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        grantee_id: &str,
        set: KfragSet,
    ) -> Result<(), DomainError>;

    /// The kfrags from `owner_id`'s partition key at `epoch` to `grantee_id`.
    fn kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        grantee_id: &str,
    ) -> Result<Option<KfragSet>, DomainError>;

    /// The epochs for which kfrags to `grantee_id` are stored, ascending.
    fn kfrag_epochs(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
    ) -> Result<Vec<u32>, DomainError>;

    /// Deletes the kfrags to `grantee_id` for one epoch, or for every epoch
    /// when `epoch` is `None` (revocation), all at once. Returns how many
    /// sets were removed; removing nothing is not an error, so revocation
    /// is idempotent.
    fn delete_kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        epoch: Option<u32>,
    ) -> Result<usize, DomainError>;

    /// Number of enrolled users.
    fn users_count(&self) -> Result<u64, DomainError>;

    /// The 32-byte service secret called `name`, created the first time it
    /// is asked for (atomically and durably, so concurrent first calls and
    /// restarts all see one value). A single-SRS store kept its dedup OPRF
    /// key seed here; `sesphrd migrate-srs` reads it from there.
    fn service_secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>, DomainError>;
}

/// One stored kfrag set with its key: (owner, partition, grantee, epoch, set).
pub type StoredKfragSet = (String, String, String, u32, KfragSet);

/// Users and kfrags in sled. `Send + Sync`: share one behind an `Arc`.
pub struct SrsStore {
    db: sled::Db,
    users: sled::Tree,
    kfrags: sled::Tree,
    invitations: sled::Tree,
    invitations_by_inviter: sled::Tree,
    recovery: sled::Tree,
    /// Serialises invitation counts and inserts (so concurrent invites
    /// cannot all pass a cap).
    invite_lock: std::sync::Mutex<()>,
    /// `sled::Tree::len` walks the whole tree; the count is kept here
    /// instead (users are never removed, so it only grows).
    users_count: AtomicU64,
}

fn kfrag_prefix(owner: &str, partition: &str, grantee: &str) -> Vec<u8> {
    let mut k = [owner, partition, grantee].join("\0").into_bytes();
    k.push(0);
    k
}

fn kfrag_key(owner: &str, partition: &str, grantee: &str, epoch: u32) -> Vec<u8> {
    let mut k = kfrag_prefix(owner, partition, grantee);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn check_len(what: &str, b: &[u8], min: usize, max: usize) -> Result<(), DomainError> {
    if b.len() < min || b.len() > max {
        return Err(DomainError::Malformed(if b.len() < min {
            format!("{what} is missing")
        } else {
            format!("{what} is {} bytes, at most {max} are accepted", b.len())
        }));
    }
    Ok(())
}

fn validate_grant_ids(owner: &str, partition: &str, grantee: &str) -> Result<(), DomainError> {
    validate_user_id(owner)?;
    validate_partition(partition)?;
    validate_user_id(grantee)?;
    Ok(())
}

impl SrsStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, DomainError> {
        let db = sled::Config::new().path(path).open()?;
        let users = db.open_tree("users")?;
        let kfrags = db.open_tree("kfrags")?;
        let invitations = db.open_tree("invitations")?;
        let invitations_by_inviter = db.open_tree("invitations_by_inviter")?;
        let recovery = db.open_tree("recovery")?;
        let users_count = AtomicU64::new(users.len() as u64);
        Ok(SrsStore {
            db,
            users,
            kfrags,
            invitations,
            invitations_by_inviter,
            recovery,
            invite_lock: std::sync::Mutex::new(()),
            users_count,
        })
    }

    /// Every stored kfrag set with its (owner, partition, grantee, epoch),
    /// for moving a single-node SRS's sets to node 1 (`sesphrd migrate-srs`).
    pub fn kfrag_sets(&self) -> Result<Vec<StoredKfragSet>, DomainError> {
        let mut out = Vec::new();
        for item in self.kfrags.iter() {
            let (k, v) = item?;
            let bad = || DomainError::Corrupt("a kfrag key does not parse".into());
            let (names, epoch) = k.split_at(k.len().checked_sub(4).ok_or_else(bad)?);
            let epoch = u32::from_be_bytes(epoch.try_into().map_err(|_| bad())?);
            let names = std::str::from_utf8(names).map_err(|_| bad())?;
            let mut parts = names.split('\0');
            let (Some(o), Some(p), Some(g), Some(""), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(bad());
            };
            let set = codec::decode_kfrags(names, &v)?;
            out.push((o.to_owned(), p.to_owned(), g.to_owned(), epoch, set));
        }
        Ok(out)
    }
}

/// A user record's fields are within what the store keeps.
fn check_user(user: &UserRecord) -> Result<(), DomainError> {
    validate_user_id(&user.user_id)?;
    check_len(
        "PRE public key",
        &user.pre_public_key,
        1,
        MAX_PUBLIC_KEY_LEN,
    )?;
    check_len("verifying key", &user.verifying_key, 1, MAX_PUBLIC_KEY_LEN)?;
    check_len("certificate", &user.certificate_der, 0, MAX_CERTIFICATE_LEN)
}

/// An update left the user's id and keys as they were, and the record is
/// within what the store keeps.
fn check_update(before: &UserRecord, after: &UserRecord) -> Result<(), DomainError> {
    if after.user_id != before.user_id
        || after.pre_public_key != before.pre_public_key
        || after.verifying_key != before.verifying_key
    {
        return Err(DomainError::Malformed(
            "an update may not change a user's id or keys".into(),
        ));
    }
    check_user(after)
}

/// A redemption's fields are within what the store keeps.
fn check_redeem(redeem: &Redeem) -> Result<(), DomainError> {
    match redeem {
        Redeem::Enroll(user) => check_user(user),
        Redeem::Reenroll {
            user_id,
            certificate_der,
            device,
        } => {
            validate_user_id(user_id)?;
            check_len("certificate", certificate_der, 1, MAX_CERTIFICATE_LEN)?;
            devices::validate_name(&device.name)
        }
    }
}

/// A kfrag set may be stored under these ids.
fn check_kfrag_set(
    owner_id: &str,
    partition: &str,
    grantee_id: &str,
    set: &KfragSet,
) -> Result<(), DomainError> {
    validate_grant_ids(owner_id, partition, grantee_id)?;
    if owner_id == grantee_id {
        return Err(DomainError::Malformed(format!(
            "{owner_id} cannot delegate to themselves"
        )));
    }
    check_len(
        "delegating public key",
        &set.delegating_public_key,
        1,
        MAX_PUBLIC_KEY_LEN,
    )?;
    if set.kfrags.is_empty() || set.kfrags.len() > MAX_KFRAGS {
        return Err(DomainError::Malformed(format!(
            "a kfrag set holds 1 to {MAX_KFRAGS} kfrags, not {}",
            set.kfrags.len()
        )));
    }
    for (i, k) in set.kfrags.iter().enumerate() {
        check_len(&format!("kfrag {i}"), k, 1, MAX_KFRAG_LEN)?;
    }
    Ok(())
}

impl Store for SrsStore {
    fn user(&self, user_id: &str) -> Result<Option<UserRecord>, DomainError> {
        validate_user_id(user_id)?;
        self.users
            .get(user_id.as_bytes())?
            .map(|v| codec::decode_user(user_id.as_bytes(), &v))
            .transpose()
    }

    fn update_user(
        &self,
        user_id: &str,
        change: &mut dyn FnMut(&mut UserRecord) -> Result<(), DomainError>,
    ) -> Result<UserRecord, DomainError> {
        validate_user_id(user_id)?;
        let key = user_id.as_bytes();
        let missing = || DomainError::Unknown(format!("no enrolled user {user_id}"));
        // Compare-and-swap on the whole record: concurrent changes of the
        // same user win or lose whole, never mix.
        let user = loop {
            let old = self.users.get(key)?.ok_or_else(missing)?;
            let before = codec::decode_user(key, &old)?;
            let mut user = before.clone();
            change(&mut user)?;
            check_update(&before, &user)?;
            let new = codec::encode_user(&user);
            if self
                .users
                .compare_and_swap(key, Some(old), Some(new))?
                .is_ok()
            {
                break user;
            }
        };
        self.db.flush()?;
        Ok(user)
    }

    fn put_recovery(&self, owner_id: &str, setup: RecoveryRecord) -> Result<(), DomainError> {
        validate_user_id(owner_id)?;
        if setup.shares.len() > MAX_TRUSTEES {
            return Err(DomainError::Malformed(format!(
                "at most {MAX_TRUSTEES} trustees"
            )));
        }
        for (trustee, share) in &setup.shares {
            validate_user_id(trustee)?;
            check_len("sealed share", share, 1, MAX_SEALED_SHARE_LEN)?;
        }
        self.recovery
            .insert(owner_id.as_bytes(), codec::encode_recovery(&setup))?;
        self.db.flush()?;
        Ok(())
    }

    fn recovery(&self, owner_id: &str) -> Result<Option<RecoveryRecord>, DomainError> {
        validate_user_id(owner_id)?;
        self.recovery
            .get(owner_id.as_bytes())?
            .map(|v| codec::decode_recovery(owner_id, &v))
            .transpose()
    }

    fn put_invitation(
        &self,
        hash: [u8; 32],
        invitation: Invitation,
        limits: Option<InviteLimits>,
        now: i64,
    ) -> Result<(), DomainError> {
        validate_user_id(&invitation.user_id)?;
        let _serial = self.invite_lock.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = [invitation.issued_by.as_bytes(), &[0]].concat();
        let mut open = 0usize;
        let mut today = 0usize;
        for item in self.invitations_by_inviter.scan_prefix(&prefix) {
            let (k, _) = item?;
            let h = &k[prefix.len()..];
            match self.invitations.get(h)? {
                Some(v) => {
                    let old = codec::decode_invitation(&v)?;
                    if old.expires_at + INVITATION_RETENTION_SECS < now {
                        self.invitations.remove(h)?;
                        self.invitations_by_inviter.remove(&k)?;
                    } else {
                        if old.used_at == 0 && old.expires_at > now {
                            open += 1;
                        }
                        if old.issued_at > now - 86_400 {
                            today += 1;
                        }
                    }
                }
                None => {
                    self.invitations_by_inviter.remove(&k)?;
                }
            }
        }
        if let Some(limits) = limits {
            if open >= limits.open {
                return Err(DomainError::UsedUp(format!(
                    "{} already has {open} unused invitations (at most {}); wait until one \
                     is used or expires",
                    invitation.issued_by, limits.open
                )));
            }
            if today >= limits.per_day {
                return Err(DomainError::UsedUp(format!(
                    "{} issued {today} invitations in the last 24 hours (at most {})",
                    invitation.issued_by, limits.per_day
                )));
            }
        }
        let index = [prefix.as_slice(), &hash].concat();
        let value = codec::encode_invitation(&invitation);
        (&self.invitations, &self.invitations_by_inviter)
            .transaction(|(inv, by)| {
                inv.insert(&hash[..], value.as_slice())?;
                by.insert(index.as_slice(), &[][..])?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => DomainError::from(e),
                sled::transaction::TransactionError::Abort(()) => {
                    DomainError::Conflict("the invitation could not be stored".into())
                }
            })?;
        self.db.flush()?;
        Ok(())
    }

    fn invitation(&self, hash: &[u8; 32]) -> Result<Option<Invitation>, DomainError> {
        self.invitations
            .get(hash)?
            .map(|v| codec::decode_invitation(&v))
            .transpose()
    }

    fn redeem_invitation(
        &self,
        hash: Option<&[u8; 32]>,
        redeem: Redeem,
        now: i64,
    ) -> Result<(), DomainError> {
        use sled::transaction::{ConflictableTransactionError as Abort, TransactionError};
        check_redeem(&redeem)?;
        let (user_key, user_value, new_user) = match &redeem {
            Redeem::Enroll(user) => (user.user_id.clone(), Some(codec::encode_user(user)), true),
            Redeem::Reenroll { user_id, .. } => (user_id.clone(), None, false),
        };
        let result = (&self.users, &self.invitations).transaction(|(users, invs)| {
            if let Some(h) = hash {
                let Some(v) = invs.get(&h[..])? else {
                    return Err(Abort::Abort(DomainError::Unknown(
                        "the invitation is not known".into(),
                    )));
                };
                let mut inv = codec::decode_invitation(&v).map_err(Abort::Abort)?;
                if inv.used_at != 0 {
                    return Err(Abort::Abort(DomainError::Conflict(
                        "invitation already used".into(),
                    )));
                }
                inv.used_at = now;
                invs.insert(&h[..], codec::encode_invitation(&inv))?;
            }
            let old = users.get(user_key.as_bytes())?;
            match (&user_value, &redeem, old) {
                (Some(value), _, None) => {
                    users.insert(user_key.as_bytes(), value.as_slice())?;
                }
                (Some(_), _, Some(_)) => {
                    return Err(Abort::Abort(DomainError::Exists(format!(
                        "user id {user_key} is already enrolled"
                    ))));
                }
                (
                    None,
                    Redeem::Reenroll {
                        certificate_der,
                        device,
                        ..
                    },
                    Some(old),
                ) => {
                    let mut user =
                        codec::decode_user(user_key.as_bytes(), &old).map_err(Abort::Abort)?;
                    devices::add(&mut user.devices, device.clone()).map_err(Abort::Abort)?;
                    user.certificate_der = certificate_der.clone();
                    users.insert(user_key.as_bytes(), codec::encode_user(&user))?;
                }
                (None, _, _) => {
                    return Err(Abort::Abort(DomainError::Unknown(format!(
                        "no enrolled user {user_key}"
                    ))));
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        if new_user {
            self.users_count.fetch_add(1, Ordering::Relaxed);
        }
        self.db.flush()?;
        Ok(())
    }

    fn put_kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        grantee_id: &str,
        set: KfragSet,
    ) -> Result<(), DomainError> {
        check_kfrag_set(owner_id, partition, grantee_id, &set)?;
        self.kfrags.insert(
            kfrag_key(owner_id, partition, grantee_id, epoch),
            codec::encode_kfrags(&set),
        )?;
        self.db.flush()?;
        Ok(())
    }

    fn kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        grantee_id: &str,
    ) -> Result<Option<KfragSet>, DomainError> {
        validate_grant_ids(owner_id, partition, grantee_id)?;
        self.kfrags
            .get(kfrag_key(owner_id, partition, grantee_id, epoch))?
            .map(|v| {
                codec::decode_kfrags(&format!("{owner_id}/{partition}/{grantee_id}@{epoch}"), &v)
            })
            .transpose()
    }

    fn kfrag_epochs(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
    ) -> Result<Vec<u32>, DomainError> {
        validate_grant_ids(owner_id, partition, grantee_id)?;
        let prefix = kfrag_prefix(owner_id, partition, grantee_id);
        let mut out = Vec::new();
        for kv in self.kfrags.scan_prefix(&prefix) {
            let (k, _) = kv?;
            out.push(epoch_of(&k, prefix.len())?);
        }
        Ok(out)
    }

    fn delete_kfrags(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        epoch: Option<u32>,
    ) -> Result<usize, DomainError> {
        validate_grant_ids(owner_id, partition, grantee_id)?;
        let removed = match epoch {
            Some(e) => usize::from(
                self.kfrags
                    .remove(kfrag_key(owner_id, partition, grantee_id, e))?
                    .is_some(),
            ),
            None => {
                // One atomic batch: a revocation never stops half way.
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for kv in self
                    .kfrags
                    .scan_prefix(kfrag_prefix(owner_id, partition, grantee_id))
                {
                    let (k, _) = kv?;
                    batch.remove(k);
                    n += 1;
                }
                self.kfrags.apply_batch(batch)?;
                n
            }
        };
        self.db.flush()?;
        Ok(removed)
    }

    fn users_count(&self) -> Result<u64, DomainError> {
        Ok(self.users_count.load(Ordering::Relaxed))
    }

    fn service_secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>, DomainError> {
        sesphr_domain::secret::load_or_create(&self.db, &format!("secret/{name}"))
    }
}

fn epoch_of(key: &[u8], prefix_len: usize) -> Result<u32, DomainError> {
    key.get(prefix_len..)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| {
            DomainError::Corrupt(format!(
                "kfrag key {:?} does not end in a 4-byte epoch",
                String::from_utf8_lossy(key)
            ))
        })
}

#[cfg(test)]
mod store_conformance;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rules;

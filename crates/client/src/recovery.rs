//! Trustee recovery: a user's master secret split among trustees she
//! chooses, any `t` of whom can help her rebuild it on a new device
//! (docs/recovery.md, "Trustee recovery"; the formats are
//! docs/crypto.md §14).
//!
//! 1. [`setup`] (the owner, on a working device): the master secret split
//!    into one share per trustee (Shamir, `t` of `n`), each sealed to that
//!    trustee's receiving key as the directory presents it and the
//!    profile's pins accept; the SRS stores the sealed shares
//!    (`Srs/SetRecovery`) and can open none.
//! 2. [`start`] (the owner, on the new device): an ephemeral key pair kept
//!    in the new directory, and a [`RecoveryRequest`] code she sends her
//!    trustees with its fingerprint, which they compare with her by phone.
//! 3. [`approve`] (each trustee): the share sealed to it fetched
//!    (`Srs/GetRecoveryShare`, audited with the owner as subject), opened
//!    with its receiving key and re-sealed to the request's key: an
//!    [`Approval`], text the trustee sends back.
//! 4. [`finish`] (the new device): `t` approvals opened with the ephemeral
//!    key and combined; a certificate for a fresh TLS key obtained by the
//!    key proof ([`crate::admin::obtain_device_certificate`]); the profile
//!    written with the epochs the mesh shows; the ephemeral key deleted.
//!    Too few or wrong approvals are one error, and nothing is written.
//!
//! [`status`] shows the owner her setup and every audit entry of a share
//! released (or refused) to anyone.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sesphr::proto;
use sesphr::rpc::Rpc;
use sesphr_crypto::shamir::{self, SealPurpose, SealedShare, ShareContext};
use sesphr_crypto::{PublicKey, SecretKey};
use sesphr_identity::{Role, validate_user_id};
use sesphr_mesh::tls::TlsMaterial;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::profile::NewProfile;
use crate::raw::MeshClients;
use crate::restore::{RestoreOptions, mesh_epochs};
use crate::{AuditEntry, ClientError, MeshFile, Profile, Session, rpc, unary, unix_now};

/// The most trustees a setup may have (the SRS's bound).
pub const MAX_TRUSTEES: usize = 10;
/// The fewest trustees that must act together.
pub const MIN_THRESHOLD: u32 = 2;
/// The file of the new directory holding a recovery request's key (0600).
pub const REQUEST_FILE: &str = "recovery-request.toml";
/// How a request code starts.
const REQUEST_PREFIX: &str = "sesphr-recovery-request";
/// How an approval starts.
const APPROVAL_PREFIX: &str = "sesphr-recovery-approval";
/// The format of [`REQUEST_FILE`].
const REQUEST_FORMAT: &str = "sesphr-recovery-request-v1";

/// A user's recovery setup, as the SRS keeps it (no shares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// How many trustees together can rebuild the master secret.
    pub threshold: u32,
    /// The trustees, sorted.
    pub trustees: Vec<String>,
    /// When the SRS stored it (Unix seconds).
    pub created_at: i64,
}

/// What [`status`] found.
#[derive(Debug, Clone)]
pub struct Status {
    /// The setup, if there is one.
    pub setup: Option<Setup>,
    /// Every audit entry about recovery of this user: setups, and each
    /// share released to a trustee or refused to anyone, oldest first.
    /// Empty for users whose audit entries AccessPolicy does not list
    /// (only patients read theirs).
    pub events: Vec<AuditEntry>,
    /// Whether `events` could be read (patients only).
    pub audit_listed: bool,
}

/// Whether an audit entry is about trustee recovery.
pub fn is_recovery_event(entry: &AuditEntry) -> bool {
    let action = entry
        .action
        .strip_prefix("denied:")
        .unwrap_or(&entry.action);
    action == Rpc::SetRecovery.audit_action() || action == Rpc::GetRecoveryShare.audit_action()
}

/// Whether an audit entry records a share released to a trustee.
pub fn is_share_release(entry: &AuditEntry) -> bool {
    entry.action == Rpc::GetRecoveryShare.audit_action() && entry.outcome == "ok"
}

/// Splits the master secret of `profile` among `trustees` (enrolled user
/// ids, distinct, not oneself), any `threshold` of whom can rebuild it,
/// and stores the sealed shares at the SRS, replacing any earlier setup.
/// Each trustee's receiving key is checked against the profile's pins
/// (pinned on first use; a changed key is refused with
/// [`ClientError::KeyChanged`]): compare fingerprints with them first.
pub async fn setup(
    mesh: &MeshFile,
    profile: &Profile,
    trustees: &[&str],
    threshold: u32,
) -> Result<Setup, ClientError> {
    let session = Session::open_profile(mesh, profile.clone())?;
    let owner = session.user_id().to_owned();
    let n = trustees.len();
    if n > MAX_TRUSTEES || threshold < MIN_THRESHOLD || threshold as usize > n {
        return Err(ClientError::Invalid(format!(
            "a recovery needs {MIN_THRESHOLD} <= threshold <= trustees <= {MAX_TRUSTEES}, not \
             threshold {threshold} of {n} trustee(s)"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for &t in trustees {
        validate_user_id(t).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if t == owner {
            return Err(ClientError::Invalid(
                "you cannot be your own trustee".into(),
            ));
        }
        if !seen.insert(t) {
            return Err(ClientError::Invalid(format!("trustee {t} is named twice")));
        }
    }
    let mut keys = Vec::with_capacity(n);
    for &t in trustees {
        let (k, _) = session.user_keys(t).await?;
        keys.push(k);
    }
    let t8 = u8::try_from(threshold).expect("at most MAX_TRUSTEES");
    let n8 = u8::try_from(n).expect("at most MAX_TRUSTEES");
    let mut rng = rand::rng();
    let shares = shamir::split(&mut rng, &session.master, t8, n8)?;
    let created_at = unix_now();
    let mut sealed = Vec::with_capacity(n);
    for (k, share) in keys.iter().zip(&shares) {
        let context = ShareContext::new(SealPurpose::Trustee, &owner, &k.user_id, t8, created_at)?;
        sealed.push(proto::RecoveryShare {
            trustee_id: k.user_id.clone(),
            sealed_share: shamir::seal_share(&mut rng, &k.pre_public_key, &context, share)?,
        });
    }
    drop(shares);
    let resp = session
        .clients
        .srs
        .clone()
        .set_recovery(unary(proto::SetRecoveryRequest {
            threshold,
            shares: sealed,
        }))
        .await
        .map_err(rpc("SRS"))?
        .into_inner();
    let mut trustees: Vec<String> = trustees.iter().map(|t| (*t).to_owned()).collect();
    trustees.sort();
    Ok(Setup {
        threshold,
        trustees,
        created_at: resp.created_at,
    })
}

/// The profile's recovery setup and the audit entries of every share
/// released or refused (see [`Status`]).
pub async fn status(mesh: &MeshFile, profile: &Profile) -> Result<Status, ClientError> {
    let session = Session::open_profile(mesh, profile.clone())?;
    let setup = match session
        .clients
        .srs
        .clone()
        .get_recovery(unary(proto::GetRecoveryRequest {}))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            Some(Setup {
                threshold: r.threshold,
                trustees: r.trustee_ids,
                created_at: r.created_at,
            })
        }
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(rpc("SRS")(s)),
    };
    let audit_listed = profile.role() == Role::Patient;
    let events = if audit_listed {
        session
            .audit()
            .await?
            .into_iter()
            .filter(|e| e.owner_id == session.user_id() && is_recovery_event(e))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Status {
        setup,
        events,
        audit_listed,
    })
}

/// A recovery request made on a new device: what the owner sends her
/// trustees ([`RecoveryRequest::code`]) and reads out to them
/// ([`RecoveryRequest::fingerprint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRequest {
    /// Whose master secret is to be rebuilt.
    pub owner_id: String,
    /// The request's (ephemeral) public key.
    pub public_key: PublicKey,
}

impl RecoveryRequest {
    /// The request code: `sesphr-recovery-request:<owner id>:<hex of the
    /// 33-byte public key>`.
    pub fn code(&self) -> String {
        format!(
            "{REQUEST_PREFIX}:{}:{}",
            self.owner_id,
            hex::encode(self.public_key.to_bytes())
        )
    }

    /// Reads a request code (surrounding whitespace ignored).
    pub fn parse(code: &str) -> Result<Self, ClientError> {
        let bad = || {
            ClientError::Invalid(
                "not a recovery request code (it starts with sesphr-recovery-request:, from \
                 `sesphr recovery start`)"
                    .into(),
            )
        };
        let mut parts = code.trim().split(':');
        if parts.next() != Some(REQUEST_PREFIX) {
            return Err(bad());
        }
        let owner_id = parts.next().ok_or_else(bad)?;
        validate_user_id(owner_id).map_err(|_| bad())?;
        let key = parts.next().ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        let public_key = hex::decode(key)
            .ok()
            .and_then(|b| PublicKey::from_bytes(&b).ok())
            .ok_or_else(bad)?;
        Ok(Self {
            owner_id: owner_id.to_owned(),
            public_key,
        })
    }

    /// SHA-256 of the public key, 64 lowercase hex digits: what the SRS
    /// records with each share it releases for this request.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.public_key.to_bytes()))
    }

    /// [`RecoveryRequest::fingerprint`] in eight groups of eight, for
    /// reading out.
    pub fn fingerprint_grouped(&self) -> String {
        group(&self.fingerprint())
    }
}

/// Eight groups of eight hex digits.
fn group(fp: &str) -> String {
    fp.as_bytes()
        .chunks(8)
        .map(|c| std::str::from_utf8(c).expect("hex"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `given` (any case, spaces or dashes anywhere) is the
/// fingerprint `fp`.
pub fn fingerprint_matches(fp: &str, given: &str) -> bool {
    let normal: String = given
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    normal == fp
}

/// The request's key as [`REQUEST_FILE`] holds it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    format: String,
    owner_id: String,
    created_at: i64,
    secret_key: String,
}

impl Drop for RequestFile {
    fn drop(&mut self) {
        self.secret_key.zeroize();
    }
}

fn request_path(home: &Path) -> PathBuf {
    home.join(REQUEST_FILE)
}

/// Starts recovering `owner_id` into `home` (new, or empty): makes an
/// ephemeral key pair, keeps its secret in `home/recovery-request.toml`
/// (0600) and returns the request to send to the trustees.
pub fn start(home: &Path, owner_id: &str) -> Result<RecoveryRequest, ClientError> {
    validate_user_id(owner_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
    match std::fs::read_dir(home) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                let what = if request_path(home).exists() {
                    "already holds a recovery request; finish it, or start again in a new --home"
                } else {
                    "is not empty; recover into a new --home"
                };
                return Err(ClientError::Profile(format!("{} {what}", home.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ClientError::io(home, e)),
    }
    std::fs::create_dir_all(home).map_err(|e| ClientError::io(home, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ClientError::io(home, e))?;
    let sk = SecretKey::generate(&mut rand::rng());
    let file = RequestFile {
        format: REQUEST_FORMAT.to_owned(),
        owner_id: owner_id.to_owned(),
        created_at: unix_now(),
        secret_key: hex::encode(sk.to_bytes().as_slice()),
    };
    let text = Zeroizing::new(toml::to_string(&file).expect("a request serializes"));
    sesphr_mesh::pki::write_secret(&request_path(home), text.as_bytes())?;
    Ok(RecoveryRequest {
        owner_id: owner_id.to_owned(),
        public_key: sk.public_key(),
    })
}

/// The recovery request kept in `home` by [`start`], and its key.
fn load_request(home: &Path) -> Result<(RecoveryRequest, SecretKey), ClientError> {
    let path = request_path(home);
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClientError::Profile(format!(
                "{} holds no recovery request; run `sesphr recovery start` there first",
                home.display()
            ))
        } else {
            ClientError::io(&path, e)
        }
    })?);
    let bad = || ClientError::Profile(format!("{}: corrupted recovery request", path.display()));
    let file: RequestFile = toml::from_str(&text).map_err(|_| bad())?;
    if file.format != REQUEST_FORMAT || validate_user_id(&file.owner_id).is_err() {
        return Err(bad());
    }
    let bytes = Zeroizing::new(hex::decode(file.secret_key.trim()).map_err(|_| bad())?);
    let sk = SecretKey::from_bytes(&bytes).map_err(|_| bad())?;
    Ok((
        RecoveryRequest {
            owner_id: file.owner_id.clone(),
            public_key: sk.public_key(),
        },
        sk,
    ))
}

/// The recovery request kept in `home`, if [`start`] made one there.
pub fn pending_request(home: &Path) -> Result<Option<RecoveryRequest>, ClientError> {
    if !request_path(home).exists() {
        return Ok(None);
    }
    load_request(home).map(|(r, _)| Some(r))
}

/// A trustee's approval of a recovery request: the trustee's share,
/// sealed to the request's key. Its text is what the trustee sends back.
#[derive(Debug, Clone)]
pub struct Approval {
    /// Whose recovery it approves.
    pub owner_id: String,
    /// The trustee who approved.
    pub trustee_id: String,
    /// How many approvals the owner needs.
    pub threshold: u32,
    /// The request it approves (SHA-256 hex of its key).
    pub request_fingerprint: String,
    /// `sesphr-recovery-approval:<base64url of the sealed share>`.
    pub text: String,
}

/// A trustee approves `request_code`: fetches the share the owner sealed to
/// it (audited with the owner as subject, naming the request's
/// fingerprint), opens it with its receiving key and re-seals it to the
/// request's key. Compare the request's fingerprint with the owner out of
/// band **before** calling this: whoever holds the request's key gets the
/// share.
pub async fn approve(
    mesh: &MeshFile,
    trustee: &Profile,
    request_code: &str,
) -> Result<Approval, ClientError> {
    let request = RecoveryRequest::parse(request_code)?;
    let session = Session::open_profile(mesh, trustee.clone())?;
    let me = session.user_id().to_owned();
    let owner = &request.owner_id;
    if *owner == me {
        return Err(ClientError::Invalid(
            "this is a request to recover your own account; your trustees approve it".into(),
        ));
    }
    let fingerprint = request.fingerprint();
    let resp = session
        .clients
        .srs
        .clone()
        .get_recovery_share(unary(proto::GetRecoveryShareRequest {
            owner_id: owner.clone(),
            request_fingerprint: fingerprint.clone(),
        }))
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::NotFound {
                ClientError::Invalid(format!(
                    "{owner} has no recovery share for you: you are not one of their trustees \
                     (or they have no recovery set up)"
                ))
            } else {
                rpc("SRS")(s)
            }
        })?
        .into_inner();
    let not_mine = || {
        ClientError::Verification(format!(
            "the SRS returned a share that is not {owner}'s share for {me}"
        ))
    };
    let sealed = SealedShare::from_bytes(&resp.sealed_share).map_err(|_| not_mine())?;
    let (my_sk, _) = crate::receiving_keys(&session.master)?;
    let share = sealed.open(&my_sk).map_err(|_| not_mine())?;
    let ctx = sealed.context();
    if ctx.purpose() != SealPurpose::Trustee
        || ctx.owner_id() != owner
        || ctx.holder_id() != me
        || u32::from(ctx.threshold()) != resp.threshold
    {
        return Err(not_mine());
    }
    let context = ShareContext::new(
        SealPurpose::Request,
        owner,
        &me,
        ctx.threshold(),
        ctx.created_at(),
    )?;
    let resealed = shamir::seal_share(&mut rand::rng(), &request.public_key, &context, &share)?;
    Ok(Approval {
        owner_id: owner.clone(),
        trustee_id: me,
        threshold: resp.threshold,
        request_fingerprint: fingerprint,
        text: format!("{APPROVAL_PREFIX}:{}", B64.encode(resealed)),
    })
}

/// What [`finish`] did.
#[derive(Debug)]
pub struct Recovered {
    /// The new profile.
    pub profile: Profile,
    /// The device name the SRS registered.
    pub device: String,
    /// The new certificate's expiry (Unix seconds).
    pub not_after: i64,
    /// The key epochs the profile starts with (what the mesh shows).
    pub epochs: std::collections::BTreeMap<String, u32>,
    /// The trustees whose approvals rebuilt the secret.
    pub trustees: Vec<String>,
}

/// The master secret the approvals rebuild for the request kept in
/// `home`, and who approved. Reads nothing but `home` and `approvals`.
fn rebuild(
    home: &Path,
    approvals: &[&str],
) -> Result<(RecoveryRequest, sesphr_crypto::MasterSecret, Vec<String>), ClientError> {
    let (request, sk) = load_request(home)?;
    let owner = &request.owner_id;
    let mut shares = Vec::with_capacity(approvals.len());
    let mut from: Vec<String> = Vec::with_capacity(approvals.len());
    let mut threshold = None;
    for (i, text) in approvals.iter().enumerate() {
        let n = i + 1;
        let bad = |why: &str| ClientError::Invalid(format!("approval {n}: {why}"));
        let body = text
            .trim()
            .strip_prefix(APPROVAL_PREFIX)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or_else(|| {
                bad("not a recovery approval (it starts with sesphr-recovery-approval:)")
            })?;
        let bytes = B64
            .decode(body)
            .map_err(|_| bad("damaged (not base64url); ask the trustee to send it again"))?;
        let sealed = SealedShare::from_bytes(&bytes)
            .map_err(|_| bad("damaged; ask the trustee to send it again"))?;
        let share = sealed.open(&sk).map_err(|_| {
            bad(&format!(
                "does not open with this request's key: it was made for another request, or \
                 altered (request {})",
                request.fingerprint_grouped()
            ))
        })?;
        let ctx = sealed.context();
        if ctx.purpose() != SealPurpose::Request || ctx.owner_id() != owner {
            return Err(bad(&format!("is not an approval of {owner}'s recovery")));
        }
        let trustee = ctx.holder_id().to_owned();
        if from.contains(&trustee) {
            return Err(bad(&format!("{trustee} approved twice")));
        }
        if threshold.is_some_and(|t| t != ctx.threshold()) {
            return Err(bad("is of another recovery setup than the others"));
        }
        threshold = Some(ctx.threshold());
        from.push(trustee);
        shares.push(share);
    }
    let Some(t) = threshold else {
        return Err(ClientError::Invalid("no approvals given".into()));
    };
    if shares.len() < usize::from(t) {
        return Err(ClientError::Invalid(format!(
            "{t} trustees must approve, {} did ({}): ask another trustee",
            shares.len(),
            from.join(", ")
        )));
    }
    let master = shamir::combine(&shares).map_err(|e| match e {
        sesphr_crypto::Error::Shares(why) => {
            ClientError::Invalid(format!("the approvals cannot be combined: {why}"))
        }
        other => other.into(),
    })?;
    Ok((request, master, from))
}

/// Finishes the recovery kept in `home`: opens the approvals with the
/// request's key, rebuilds the master secret, obtains a certificate for a
/// fresh TLS key by the key proof, writes the profile (epochs from the
/// mesh; `options` as for a restore) and deletes the request's key. Too
/// few or wrong approvals are one error and nothing is written; so is a
/// refusal by the SRS (the request stays, to try again).
pub async fn finish(
    mesh: &MeshFile,
    home: &Path,
    approvals: &[&str],
    options: RestoreOptions<'_>,
) -> Result<Recovered, ClientError> {
    if let Some(p) = options.passphrase
        && p.is_empty()
    {
        return Err(ClientError::Invalid("a passphrase may not be empty".into()));
    }
    if Profile::exists(home) {
        return Err(ClientError::Profile(format!(
            "{} already holds a profile",
            home.display()
        )));
    }
    let (request, master, trustees) = rebuild(home, approvals)?;
    let owner = &request.owner_id;
    let issued =
        crate::admin::obtain_device_certificate(mesh, &master, owner, None, None, options.device)
            .await?;
    let identity = issued.identity.clone();
    let is_patient = match identity.as_user() {
        Some((role, id)) if id == owner => role == Role::Patient,
        _ => {
            return Err(ClientError::Verification(format!(
                "the SRS issued a certificate for {identity}, not for {owner}"
            )));
        }
    };
    let epochs = if is_patient {
        let tls = TlsMaterial::from_pem(
            issued.certificate_pem.clone(),
            issued.tls_key_pem.clone(),
            issued.ca_pem.clone(),
        )?;
        mesh_epochs(&MeshClients::connect(mesh, &tls)?, owner).await?
    } else {
        Default::default()
    };
    let profile = Profile::create_with(
        home,
        &identity,
        &master,
        &issued.tls_key_pem,
        &issued.certificate_pem,
        &issued.ca_pem,
        NewProfile {
            passphrase: options.passphrase,
            epochs: &epochs,
            files: &[],
        },
    )?;
    let path = request_path(home);
    std::fs::remove_file(&path).map_err(|e| ClientError::io(&path, e))?;
    Ok(Recovered {
        profile,
        device: issued.device.clone(),
        not_after: issued.not_after,
        epochs,
        trustees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_code_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("new");
        let req = start(&home, "alice").unwrap();
        let back = RecoveryRequest::parse(&format!("  {}\n", req.code())).unwrap();
        assert_eq!(back, req);
        assert_eq!(req.fingerprint().len(), 64);
        assert!(fingerprint_matches(
            &req.fingerprint(),
            &req.fingerprint_grouped().to_uppercase()
        ));
        assert!(!fingerprint_matches(&req.fingerprint(), "00"));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.join(REQUEST_FILE)), 0o600);
        assert_eq!(mode(&home), 0o700);
        assert_eq!(pending_request(&home).unwrap(), Some(req.clone()));
        let err = start(&home, "alice").unwrap_err();
        assert!(err.to_string().contains("already holds a recovery request"));
        for bad in [
            "",
            "sesphr-recovery-request:alice",
            "sesphr-recovery-request:Alice:00",
            &req.code().replace("alice", "al:ice"),
            &format!("{}00", req.code()),
            &req.code().replace("request", "approval"),
        ] {
            assert!(RecoveryRequest::parse(bad).is_err(), "{bad}");
        }
    }

    /// The offline half of a recovery: approvals made directly with the
    /// crypto (as `approve` seals them) rebuild the secret; one alone, a
    /// duplicate, a tampered one or one for another request is refused.
    #[test]
    fn approvals_rebuild_the_secret_only_when_enough_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("new");
        let req = start(&home, "alice").unwrap();
        let other = start(&dir.path().join("other"), "alice").unwrap();
        let master = sesphr_crypto::MasterSecret::generate(&mut rand::rng());
        let shares = shamir::split(&mut rand::rng(), &master, 2, 3).unwrap();
        let approval = |to: &RecoveryRequest, who: &str, i: usize| {
            let ctx = ShareContext::new(SealPurpose::Request, "alice", who, 2, 7).unwrap();
            let sealed =
                shamir::seal_share(&mut rand::rng(), &to.public_key, &ctx, &shares[i]).unwrap();
            format!("{APPROVAL_PREFIX}:{}", B64.encode(sealed))
        };
        let (a, b, c) = (
            approval(&req, "bob", 0),
            approval(&req, "carol", 1),
            approval(&req, "dave", 2),
        );
        let (_, back, from) = rebuild(&home, &[&a, &c]).unwrap();
        assert_eq!(back.to_bytes(), master.to_bytes());
        assert_eq!(from, ["bob", "dave"]);
        let err = |list: &[&str]| rebuild(&home, list).map(|_| ()).unwrap_err().to_string();
        assert!(err(&[&b]).contains("2 trustees must approve, 1 did (carol)"));
        assert!(err(&[&b, &b]).contains("carol approved twice"));
        assert!(err(&[]).contains("no approvals"));
        let foreign = approval(&other, "carol", 1);
        assert!(err(&[&a, &foreign]).contains("approval 2: does not open"));
        // One character changed anywhere in the body.
        let mid = APPROVAL_PREFIX.len() + 1 + (b.len() - APPROVAL_PREFIX.len()) / 2;
        let mut tampered = b.clone().into_bytes();
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let e = err(&[&a, &tampered]);
        assert!(e.starts_with("approval 2: "), "{e}");
        assert!(err(&[&a, "hello"]).contains("approval 2: not a recovery approval"));
        // A share sealed to a trustee is not an approval.
        let ctx = ShareContext::new(SealPurpose::Trustee, "alice", "carol", 2, 7).unwrap();
        let sealed = shamir::seal_share(&mut rand::rng(), &req.public_key, &ctx, &shares[1]);
        let wrong = format!("{APPROVAL_PREFIX}:{}", B64.encode(sealed.unwrap()));
        assert!(err(&[&a, &wrong]).contains("is not an approval of alice's recovery"));
        // Nothing was written or removed.
        assert!(pending_request(&home).unwrap().is_some());
        assert!(!Profile::exists(&home));
    }
}

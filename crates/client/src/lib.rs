//! The client SDK: what patients and practitioners use.
//!
//! **API boundary.** [`Patient`] owns records: it uploads (encrypting while
//! streaming), grants, revokes, rotates partition keys and reads its audit
//! trail. [`Practitioner`] (family and friends too) reads what it was
//! granted: it downloads, asks the SRS to re-encrypt the capsule, verifies
//! every cfrag's proof and decrypts while streaming. Both run over mTLS with
//! the certificate the SRS issued at [`enroll`]ment. Secret keys never leave
//! the client; memory is bounded by a few segments, not by record size.
//!
//! The API speaks in the SDK's own types ([`Record`], [`Grant`],
//! [`AuditEntry`], …) and the domain's names ([`Role`], [`UserId`],
//! [`PartitionName`], [`RecordId`]); the wire messages stay inside the
//! crate. [`raw`] is the one deliberate exception: the gRPC clients
//! themselves, for tests and tools that must speak the wire protocol.

#![warn(missing_docs)]

pub mod admin;
pub mod audit_export;
pub mod audit_log;
mod bounds;
mod deadline;
mod dedup;
pub mod fhir;
mod ledger;
mod mesh_file;
mod nodes;
mod parallel;
mod pending;
mod pins;
mod profile;
pub mod recovery;
pub mod restore;
pub mod sealed;
mod types;
mod upload;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use rand::RngCore;
use sesphr_crypto::{
    self as crypto, Capsule, KemKey, MasterSecret, PublicKey, RecordHeader, RecordOpener,
    RecordSealer, SecretKey, VerifyingKey,
};
use sesphr_identity::{Identity, validate_partition, validate_user_id};
pub use sesphr_identity::{PartitionName, RecordId, Role, UserId};
use tonic::Status;

pub use bounds::{
    AUDIT_PAGE, LIST_PAGE_SIZE, MAX_AUDIT_ENTRIES, MAX_LIST_PAGES, MAX_LIST_RECORDS,
    MAX_LISTING_BYTES, printable,
};
pub use deadline::{TimedChannel, TimeoutSettings, Timeouts};
pub use dedup::{Stored, blob_len as dedup_blob_len};
pub use ledger::{Disagreement, LedgerEntry};
pub use pins::{PinStatus, UserKeys, fingerprint};
pub use profile::{NewProfile, PassphrasePrompt, Profile, set_passphrase_prompt};
pub use restore::reconcile_epochs;
pub use types::{AuditEntry, AuditVerification, Grant, Grants, Record};

pub use audit_log::{ProvenEntry, VerifiedAudit};
pub use mesh_file::{
    AuditLogKeys, AuditSection, MeshFile, MeshFileError, Node, NodeEntry, WitnessEntry,
};
pub use nodes::Notices;
pub use pending::{Owed, PendingOp};
use raw::MeshClients;
use sesphr::proto::srs_client::SrsClient;
use sesphr::proto::{self, get_record_response};
use sesphr_mesh::tls;
pub use sesphr_mesh::{error_line, unix_now};

/// Deadline of unary calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest gRPC message the client accepts (a ciphertext chunk plus framing).
const MAX_MESSAGE: usize = 8 << 20;

/// Errors of the client SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A service answered with an error.
    #[error("{service}: {}", describe(.status))]
    Rpc {
        /// The service that refused.
        service: &'static str,
        /// What it answered.
        status: Box<Status>,
    },
    /// The local profile is missing, incomplete or unreadable.
    #[error("{0}")]
    Profile(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file (`input`/`output` for the caller's streams).
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The profile and the mesh file do not fit together.
    #[error("{0}")]
    Config(String),
    /// Encryption or decryption failed (a decryption failure means the
    /// data is not what was sealed).
    #[error("crypto: {0}")]
    Crypto(#[from] crypto::Error),
    /// Something a service returned failed verification: it is
    /// misbehaving or the data was tampered with.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The caller's request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The SRS presents other keys for a user than the ones this profile
    /// pinned: the directory may be substituting keys, or the user
    /// re-enrolled. Nothing is sent to or accepted from that user until the
    /// new keys are confirmed out of band.
    #[error(
        "the SRS presents other keys for {user_id} than the ones you pinned (pinned {pinned}, \
         presented {presented}); if {user_id} really has new keys, check the fingerprint with \
         them and run `sesphr trust {user_id} --fingerprint {presented}`"
    )]
    KeyChanged {
        /// The user.
        user_id: String,
        /// Fingerprint of the pinned keys.
        pinned: String,
        /// Fingerprint of the keys the SRS presented.
        presented: String,
    },
    /// The TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A key or certificate request could not be made or written.
    #[error(transparent)]
    Pki(#[from] sesphr_mesh::pki::PkiError),
}

fn describe(status: &Status) -> String {
    let code = match status.code() {
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::DataLoss => "data loss",
        _ => "error",
    };
    format!("{code}: {}", status.message())
}

impl ClientError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        ClientError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The gRPC status, if a service refused.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The gRPC code, if a service refused.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(|s| s.code())
    }
}

fn rpc(service: &'static str) -> impl FnOnce(Status) -> ClientError {
    move |status| ClientError::Rpc {
        service,
        status: Box::new(status),
    }
}

fn unary<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// The low-level escape hatch: the generated gRPC clients of the three
/// services, speaking the wire messages of `sesphr::proto` directly.
///
/// Nothing here checks, encrypts or verifies anything: it exists for tests
/// and tools that must send what the SDK never would (malformed or hostile
/// requests) or measure the wire itself. Applications use [`Patient`],
/// [`Practitioner`] and [`Session`].
pub mod raw {
    use sesphr::proto::access_policy_client::AccessPolicyClient;
    use sesphr::proto::cloud_storage_client::CloudStorageClient;
    use sesphr::proto::srs_client::SrsClient;
    use sesphr::proto::srs_node_client::SrsNodeClient;
    use sesphr_identity::{Identity, Service};
    use sesphr_mesh::tls::{self, TlsMaterial};

    pub use crate::nodes::{NodeClient, Nodes};

    pub use crate::deadline::TimedChannel;
    use crate::{ClientError, MAX_MESSAGE, MeshFile};

    /// gRPC clients of the services and of every re-encryption node, over
    /// one identity's mTLS. Each talks only to a server presenting that
    /// service's (or node's) identity, and every call is bounded by the
    /// mesh file's [`Timeouts`](crate::Timeouts).
    #[derive(Clone, Debug)]
    pub struct MeshClients {
        /// CloudStorage: records and blobs.
        pub cloud: CloudStorageClient<TimedChannel>,
        /// The SRS setup service: enrollment and the user directory.
        pub srs: SrsClient<TimedChannel>,
        /// AccessPolicy: grants and the audit trail.
        pub policy: AccessPolicyClient<TimedChannel>,
        /// The re-encryption nodes: kfrag shares, cfrags, OPRF shares.
        pub nodes: Nodes,
    }

    impl MeshClients {
        /// Connects (lazily) to the mesh's endpoints with `tls`.
        pub fn connect(mesh: &MeshFile, tls: &TlsMaterial) -> Result<Self, ClientError> {
            tls::install_crypto_provider();
            let timeouts = mesh.timeouts().map_err(ClientError::Config)?;
            let ch = |url: &str, service| {
                TimedChannel::connect(
                    url,
                    tls.client_config(),
                    &mesh.trust_domain,
                    service,
                    timeouts,
                )
            };
            Ok(Self {
                cloud: CloudStorageClient::new(ch(&mesh.cloud_storage, Service::CloudStorage)?)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
                srs: SrsClient::new(ch(&mesh.srs, Service::Srs)?),
                policy: AccessPolicyClient::new(ch(&mesh.access_policy, Service::AccessPolicy)?),
                nodes: connect_nodes(mesh, tls, timeouts)?,
            })
        }
    }

    /// Clients of the mesh file's re-encryption nodes.
    fn connect_nodes(
        mesh: &MeshFile,
        tls: &TlsMaterial,
        timeouts: crate::Timeouts,
    ) -> Result<Nodes, ClientError> {
        let (threshold, listed) = mesh.nodes().map_err(ClientError::Config)?;
        let mut nodes = Vec::with_capacity(listed.len());
        for node in listed {
            let expected = Identity::srs_node(&mesh.trust_domain, node.index);
            let channel = TimedChannel::connect_to(
                &node.url,
                tls.client_config(),
                &expected,
                "SRS node",
                timeouts,
            )?;
            nodes.push(NodeClient {
                index: node.index,
                url: node.url,
                client: SrsNodeClient::new(channel),
                oprf_public_share: node.oprf_public_share,
            });
        }
        Ok(Nodes {
            threshold: usize::from(threshold),
            nodes,
        })
    }
}

/// The PRE key pair a user receives re-encrypted capsules under.
pub fn receiving_keys(master: &MasterSecret) -> Result<(SecretKey, PublicKey), ClientError> {
    Ok(master.partition_keys("@receive", 0)?)
}

/// Enrols a new user with the mesh and writes its profile to `home`:
/// generates the master secret and a TLS key locally, sends the SRS only a
/// CSR and public keys, stores the issued certificate. `invitation` is the
/// one an operator (or, for family and friends, the patient) issued for
/// this id and role; empty for a patient's self-registration, where the
/// mesh allows it.
pub async fn enroll(
    mesh: &MeshFile,
    home: &Path,
    user_id: &str,
    role: Role,
    invitation: &str,
) -> Result<Profile, ClientError> {
    enroll_protected(mesh, home, user_id, role, invitation, None).await
}

/// [`enroll`], the new profile's secret files sealed under `passphrase`
/// from the start if one is given (see [`sealed`]).
pub async fn enroll_protected(
    mesh: &MeshFile,
    home: &Path,
    user_id: &str,
    role: Role,
    invitation: &str,
    passphrase: Option<&sealed::Passphrase>,
) -> Result<Profile, ClientError> {
    if passphrase.is_some_and(sealed::Passphrase::is_empty) {
        return Err(ClientError::Invalid("a passphrase may not be empty".into()));
    }
    validate_user_id(user_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
    if Profile::exists(home) {
        return Err(ClientError::Profile(format!(
            "{} already holds a profile; use another --home",
            home.display()
        )));
    }
    tls::install_crypto_provider();
    let ca_pem = std::fs::read_to_string(&mesh.ca).map_err(|e| ClientError::io(&mesh.ca, e))?;
    let master = MasterSecret::generate(&mut rand::rng());
    let (_, receiving_pk) = receiving_keys(&master)?;
    let verifying_key = master.signing_key().verifying_key();
    let (csr_der, tls_key_pem) = sesphr_mesh::pki::make_csr()?;
    let channel = deadline::TimedChannel::connect(
        &mesh.srs,
        tls::anonymous_client_config(&ca_pem),
        &mesh.trust_domain,
        sesphr_identity::Service::Srs,
        mesh.timeouts().map_err(ClientError::Config)?,
    )?;
    let resp = SrsClient::new(channel)
        .enroll(unary(proto::EnrollRequest {
            invitation: invitation.trim().to_owned(),
            user_id: user_id.to_owned(),
            role: proto::Role::from(role) as i32,
            csr_der,
            pre_public_key: receiving_pk.to_bytes().to_vec(),
            verifying_key: verifying_key.to_bytes().to_vec(),
            key_proof: Vec::new(),
            device: String::new(),
        }))
        .await
        .map_err(rpc("SRS"))?
        .into_inner();
    let identity = Identity::user(&mesh.trust_domain, role, user_id)
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    if resp.spiffe_id != identity.to_string() {
        return Err(ClientError::Verification(format!(
            "the SRS issued a certificate for {} instead of {identity}",
            resp.spiffe_id
        )));
    }
    let profile = Profile::create_with(
        home,
        &identity,
        &master,
        &tls_key_pem,
        &resp.certificate_pem,
        &ca_pem,
        NewProfile {
            passphrase,
            ..NewProfile::default()
        },
    )?;
    ledger::Ledger::create(home)?;
    Ok(profile)
}

/// The fingerprint of a profile's own keys: what its user reads out to
/// those who grant to it or read its records (`sesphr whois`).
pub fn own_fingerprint(profile: &Profile) -> Result<String, ClientError> {
    let master = profile.master_secret()?;
    let (_, pre) = receiving_keys(&master)?;
    Ok(fingerprint(
        profile.user_id(),
        profile.role(),
        &pre,
        &master.signing_key().verifying_key(),
    ))
}

/// Progress callback: bytes done so far.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// A progress callback that ignores progress.
pub fn no_progress() -> Progress {
    std::sync::Arc::new(|_| {})
}

/// What both patients and practitioners can do.
pub struct Session {
    /// The profile the session was opened from.
    pub profile: Profile,
    master: MasterSecret,
    /// The raw gRPC clients under this session's identity (see [`raw`]).
    pub clients: MeshClients,
    pins: pins::PinStore,
    /// What went wrong at single re-encryption nodes while calls succeeded.
    pub notices: Notices,
    /// The mesh file's `[audit]` keys, or why it has none usable.
    audit_keys: Result<AuditLogKeys, String>,
}

impl Session {
    /// Opens the profile in `home` against `mesh`.
    pub fn open(mesh: &MeshFile, home: &Path) -> Result<Self, ClientError> {
        Self::open_profile(mesh, Profile::load(home)?)
    }

    /// Opens `profile` against `mesh` (e.g. a protected profile given its
    /// passphrase with [`Profile::with_passphrase`]).
    pub fn open_profile(mesh: &MeshFile, profile: Profile) -> Result<Self, ClientError> {
        if profile.identity.trust_domain != mesh.trust_domain {
            return Err(ClientError::Config(format!(
                "profile is for trust domain {}, mesh file for {}",
                profile.identity.trust_domain, mesh.trust_domain
            )));
        }
        let master = profile.master_secret()?;
        let clients = MeshClients::connect(mesh, &profile.tls()?)?;
        let pins = pins::PinStore::new(&profile.home);
        Ok(Self {
            profile,
            master,
            clients,
            pins,
            notices: Notices::default(),
            audit_keys: mesh.audit_log(),
        })
    }

    fn pending(&self) -> pending::Pending {
        pending::Pending::new(&self.profile.home)
    }

    /// Node operations this profile still owes (shares a node did not take,
    /// deletions a node did not hear), oldest first.
    pub fn pending_node_ops(&self) -> Result<Vec<PendingOp>, ClientError> {
        self.pending().load()
    }

    /// Sends the owed node operations again; returns how many are still
    /// owed (their nodes are still unreachable).
    pub async fn retry_pending(&self) -> Result<usize, ClientError> {
        self.clients.nodes.retry(&self.pending()).await
    }

    /// `user_id`'s keys as the SRS presents them, unchecked against the
    /// pins (for showing them).
    async fn directory_keys(&self, user_id: &str) -> Result<UserKeys, ClientError> {
        validate_user_id(user_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let info = self
            .clients
            .srs
            .clone()
            .get_user(unary(proto::GetUserRequest {
                user_id: user_id.to_owned(),
            }))
            .await
            .map_err(rpc("SRS"))?
            .into_inner();
        if info.user_id != user_id {
            return Err(ClientError::Verification(format!(
                "asked the SRS for {user_id}'s keys, it answered with another user's"
            )));
        }
        UserKeys::from_proto(info)
    }

    /// `user_id`'s keys, checked against the pinned ones: pinned on first
    /// use, refused with [`ClientError::KeyChanged`] if they changed.
    pub async fn user_keys(&self, user_id: &str) -> Result<(UserKeys, PinStatus), ClientError> {
        let keys = self.directory_keys(user_id).await?;
        let status = self.pins.check_or_pin(&keys)?;
        Ok((keys, status))
    }

    /// `user_id`'s keys as the SRS presents them and how they compare with
    /// the pinned ones; pins nothing.
    pub async fn whois(&self, user_id: &str) -> Result<(UserKeys, PinStatus), ClientError> {
        let keys = self.directory_keys(user_id).await?;
        let status = self.pins.status(&keys)?;
        Ok((keys, status))
    }

    /// Pins the keys the SRS presents for `user_id` if, and only if, their
    /// fingerprint is `fingerprint` (checked with the user out of band).
    pub async fn trust(&self, user_id: &str, fingerprint: &str) -> Result<UserKeys, ClientError> {
        let keys = self.directory_keys(user_id).await?;
        let wanted: String = fingerprint
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let presented = keys.fingerprint();
        if wanted != presented {
            return Err(ClientError::Verification(format!(
                "the SRS presents keys with fingerprint {presented} for {user_id}, not {wanted}; \
                 nothing was pinned"
            )));
        }
        self.pins.pin(&keys)?;
        Ok(keys)
    }

    /// The fingerprint pinned for `user_id`, if any (local; no network).
    pub fn pinned_fingerprint(&self, user_id: &str) -> Result<Option<String>, ClientError> {
        self.pins.pinned_fingerprint(user_id)
    }

    /// The key a record of `owner_id` must be signed with: one's own for
    /// one's records, otherwise the owner's pinned key (pinned on first use).
    async fn owner_verifying_key(&self, owner_id: &str) -> Result<VerifyingKey, ClientError> {
        if self.profile.role() == Role::Patient && owner_id == self.profile.user_id() {
            return Ok(self.master.signing_key().verifying_key());
        }
        if let Some(vk) = self.pins.pinned_verifying_key(owner_id)? {
            return Ok(vk);
        }
        Ok(self.user_keys(owner_id).await?.0.verifying_key)
    }

    /// The user id the session acts as.
    pub fn user_id(&self) -> &str {
        self.profile.user_id()
    }

    /// Records of `owner` (default: oneself) the caller may see, all pages;
    /// each row checked to be of that owner (and `partition`, if given),
    /// the listing bounded by [`MAX_LIST_RECORDS`].
    pub async fn list(
        &self,
        owner: Option<&str>,
        partition: Option<&str>,
    ) -> Result<Vec<Record>, ClientError> {
        bounds::list(&self.clients, self.user_id(), owner, partition).await
    }

    /// Grants given and received.
    pub async fn grants(&self) -> Result<Grants, ClientError> {
        let resp = self
            .clients
            .policy
            .clone()
            .list_grants(unary(proto::ListGrantsRequest {}))
            .await
            .map_err(rpc("AccessPolicy"))?
            .into_inner();
        Grants::from_proto(resp)
    }

    /// The KEM key of a record: directly for its owner; through t
    /// re-encryption nodes for a grantee, verifying every cfrag against the
    /// owner's verifying key.
    async fn record_key(
        &self,
        meta: &proto::RecordMeta,
        header: &RecordHeader,
        verifying_key: &VerifyingKey,
    ) -> Result<KemKey, ClientError> {
        let capsule: &Capsule = header.capsule();
        let is_owner =
            self.profile.role() == Role::Patient && meta.owner_id == self.profile.user_id();
        if is_owner {
            let (sk, _) = self.master.partition_keys(&meta.partition, meta.epoch)?;
            return Ok(crypto::decapsulate_original(&sk, capsule)?);
        }
        let (my_sk, my_pk) = receiving_keys(&self.master)?;
        self.clients
            .nodes
            .reencrypt(
                meta,
                capsule,
                verifying_key,
                (&my_sk, &my_pk),
                &self.notices,
            )
            .await
    }

    /// Downloads and decrypts a record into `out`, segment by segment.
    /// Returns the record's metadata.
    ///
    /// The header's owner signature is checked (against one's own key or
    /// the owner's pinned key) before the SRS is asked for anything, and
    /// every segment is authenticated and its owner signature verified
    /// before it is written; a truncated, altered or forged record fails.
    /// A deduplicated record's blob is bound by the owner's signature
    /// through its id (SHA-256 of the whole blob), which can only be
    /// compared once the blob ended: its segments are written as they
    /// authenticate under the content key and the id is checked last. So on
    /// any error, discard what was written (the CLI writes to a temporary
    /// file and renames it only on success).
    pub async fn download(
        &self,
        record_id: &str,
        out: &mut (dyn Write + Send),
        progress: Progress,
    ) -> Result<Record, ClientError> {
        validate_user_id(record_id)
            .map_err(|_| ClientError::Invalid(format!("{record_id:?} is not a valid record id")))?;
        let mut stream = self
            .clients
            .cloud
            .clone()
            .get_record(proto::GetRecordRequest {
                record_id: record_id.to_owned(),
            })
            .await
            .map_err(rpc("CloudStorage"))?
            .into_inner();
        let meta = match stream.message().await.map_err(rpc("CloudStorage"))? {
            Some(proto::GetRecordResponse {
                part: Some(get_record_response::Part::Meta(m)),
            }) => m,
            _ => {
                return Err(ClientError::Verification(
                    "CloudStorage did not start the record with its metadata".into(),
                ));
            }
        };
        let header = RecordHeader::from_bytes(&meta.record_header)?;
        if header.record_id() != meta.record_id.as_bytes()
            || header.owner_id() != meta.owner_id.as_bytes()
            || header.partition() != meta.partition
            || header.epoch() != meta.epoch
            || meta.record_id != record_id
        {
            return Err(ClientError::Verification(
                "record header does not match the record CloudStorage served".into(),
            ));
        }
        // Before any key is derived or asked for: a partition name no owner
        // can upload to (e.g. the reserved `@receive`) is a forgery, and so
        // is a header its owner did not sign.
        check_partition(header.partition()).map_err(|_| {
            ClientError::Verification(format!(
                "CloudStorage served a record of partition {:?}, which no record can have",
                header.partition()
            ))
        })?;
        let record = Record::from_proto(meta.clone())?;
        let owner_key = self.owner_verifying_key(&meta.owner_id).await?;
        let binding = dedup::header_binding(&meta);
        header.verify(&owner_key, &binding).map_err(|_| {
            ClientError::Verification(format!(
                "record {record_id} is not signed by its owner {}: refusing it",
                meta.owner_id
            ))
        })?;
        let key = self.record_key(&meta, &header, &owner_key).await?;
        if !meta.blob_id.is_empty() {
            dedup::download_blob(&meta, header, &key, stream, out, progress).await?;
            return Ok(record);
        }
        let opener = parallel::ParallelOpener::new(
            RecordOpener::new(header, &key, &owner_key)?.into_parallel()?,
        );
        let mut done = 0u64;
        parallel::open_stream(opener, &[], &mut stream, out, |chunk| {
            done += chunk.len() as u64;
            progress(done);
        })
        .await?;
        Ok(record)
    }

    /// Audit entries (a patient: about its records) as AccessPolicy lists
    /// them, bounded ([`MAX_AUDIT_ENTRIES`], [`AUDIT_PAGE`]) but **not
    /// checked against the log**: [`Session::verified_audit`] is the read
    /// that proves each entry and pins the log's head.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>, ClientError> {
        bounds::audit(&self.clients).await
    }

    /// The caller's audit entries, each proven included in a checkpoint the
    /// log signed and a quorum of witnesses cosigned, that checkpoint proven
    /// to extend the one this profile pinned before (then pinned itself):
    /// see [`audit_log`]. A log truncated, rewritten or forked relative to
    /// what this profile saw is a [`ClientError::Verification`] naming the
    /// sizes and roots.
    pub async fn verified_audit(&self) -> Result<audit_log::VerifiedAudit, ClientError> {
        let keys = self
            .audit_keys
            .clone()
            .map_err(|e| ClientError::Config(format!("mesh file {e}")))?;
        let entries = bounds::audit(&self.clients).await?;
        audit_log::verified_read(&self.clients, &keys, &self.profile.home, entries).await
    }

    /// Recomputes the audit chain at AccessPolicy (its own report: the
    /// client checks nothing; see [`Session::verified_audit`]).
    pub async fn verify_audit(&self) -> Result<AuditVerification, ClientError> {
        let resp = self
            .clients
            .policy
            .clone()
            .verify_audit(unary(proto::VerifyAuditRequest::default()))
            .await
            .map_err(rpc("AccessPolicy"))?
            .into_inner();
        Ok(AuditVerification::from_proto(resp))
    }
}

/// A segment that authenticates under the record's key but was not signed
/// by the owner was written by someone else who holds the key.
pub(crate) fn refused_segment(e: crypto::Error) -> ClientError {
    match e {
        crypto::Error::VerificationFailed => ClientError::Verification(
            "a segment of the record is not signed by its owner: refusing it".into(),
        ),
        other => ClientError::Crypto(other),
    }
}

/// Ciphertext size of a plaintext of `len` bytes in segments of `seg`.
pub fn ciphertext_len(len: u64, seg: u64) -> u64 {
    let seg = u32::try_from(seg).unwrap_or(u32::MAX);
    crypto::record::ciphertext_len(len, seg)
}

/// When a grant starts and ends.
#[derive(Debug, Clone, Default)]
pub struct GrantOptions {
    /// Records created before this time stay closed (backward access
    /// control). The partition is rotated first and the grantee gets kfrags
    /// for the new epoch only, so older records are closed cryptographically
    /// too, not only by the services' checks.
    pub not_before: Option<i64>,
    /// When the grant ends (Unix seconds); `None`: never.
    pub expires_at: Option<i64>,
}

/// A patient: owns records.
pub struct Patient {
    /// The session a patient's operations run in.
    pub session: Session,
}

/// A practitioner, family member or friend: reads what it was granted.
pub struct Practitioner {
    /// The session a practitioner's operations run in.
    pub session: Session,
}

impl Practitioner {
    /// Opens the profile in `home` against `mesh`.
    pub fn open(mesh: &MeshFile, home: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            session: Session::open(mesh, home)?,
        })
    }
}

impl std::ops::Deref for Practitioner {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl std::ops::Deref for Patient {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

fn check_partition(p: &str) -> Result<(), ClientError> {
    validate_partition(p).map_err(|e| ClientError::Invalid(e.to_string()))
}

/// A fresh record of a partition: its id, the current key epoch, its header
/// (with a new capsule) and the key that capsule encapsulates.
struct NewRecordKeys {
    record_id: String,
    epoch: u32,
    /// The header, still to be signed (with the binding of what it names).
    draft: crypto::HeaderDraft,
    kem_key: KemKey,
}

impl NewRecordKeys {
    /// The first message of this record's upload into `partition`, with the
    /// header as finally encoded.
    fn upload_header(
        &self,
        partition: &str,
        record_header: Vec<u8>,
        ciphertext_size: u64,
    ) -> proto::RecordUpload {
        proto::RecordUpload {
            record_id: self.record_id.clone(),
            partition: partition.to_owned(),
            epoch: self.epoch,
            record_header,
            ciphertext_size,
            ..Default::default()
        }
    }
}

impl Patient {
    fn new_record(&self, partition: &str) -> Result<NewRecordKeys, ClientError> {
        let epoch = self.profile.current_epoch(partition)?;
        let (_, pk) = self.master.partition_keys(partition, epoch)?;
        let mut rng = rand::rng();
        let (capsule, kem_key) = crypto::encapsulate(&mut rng, &pk);
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let record_id = hex::encode(id);
        let draft = crypto::HeaderDraft::new(
            &mut rng,
            record_id.as_bytes(),
            self.user_id().as_bytes(),
            partition,
            epoch,
            capsule,
        )?;
        Ok(NewRecordKeys {
            record_id,
            epoch,
            draft,
            kem_key,
        })
    }

    /// Opens the profile in `home` against `mesh`; it must be a patient's.
    pub fn open(mesh: &MeshFile, home: &Path) -> Result<Self, ClientError> {
        Self::open_profile(mesh, Profile::load(home)?)
    }

    /// Opens `profile` against `mesh` (see [`Session::open_profile`]); it
    /// must be a patient's.
    pub fn open_profile(mesh: &MeshFile, profile: Profile) -> Result<Self, ClientError> {
        let session = Session::open_profile(mesh, profile)?;
        if session.profile.role() != Role::Patient {
            return Err(ClientError::Invalid(format!(
                "{} is a {}, not a patient",
                session.user_id(),
                session.profile.role()
            )));
        }
        Ok(Self { session })
    }

    /// An invitation for a family member or friend to enrol as `user_id`
    /// (roles `family` and `friend` only; practitioners are invited by an
    /// operator). Hand its text to them out of band.
    pub async fn invite(
        &self,
        user_id: &str,
        role: Role,
        valid_for: Option<std::time::Duration>,
    ) -> Result<admin::Invitation, ClientError> {
        admin::invite(&self.clients, user_id, role, valid_for).await
    }

    /// Encrypts `len` bytes from `reader` under the partition's current key
    /// epoch while streaming them to CloudStorage. Returns the stored record.
    pub async fn upload(
        &self,
        partition: &str,
        reader: impl Read + Send + 'static,
        len: u64,
        progress: Progress,
    ) -> Result<Record, ClientError> {
        check_partition(partition)?;
        let fresh = self.new_record(partition)?;
        let signer = self.master.signing_key();
        let header = fresh.draft.clone().sign(&signer, &[]);
        let seg = header.segment_size() as u64;
        let first = fresh.upload_header(partition, header.to_bytes(), ciphertext_len(len, seg));
        let sealer = RecordSealer::new(header, &fresh.kem_key, &signer)?;
        upload::put_streamed(&self.clients, first, move |send| {
            seal_stream(reader, len, seg, sealer, send, progress)
        })
        .await
    }

    /// Grants `grantee_id` access to `partition`: makes kfrags from each
    /// covered epoch's partition key to the grantee's public key (pinned
    /// on first use; a changed key is refused), stores them at the SRS,
    /// then records the grant at AccessPolicy and, once AccessPolicy
    /// acknowledged exactly this grant, in the profile's grant ledger.
    pub async fn grant(
        &self,
        partition: &str,
        grantee_id: &str,
        opts: GrantOptions,
    ) -> Result<Grant, ClientError> {
        check_partition(partition)?;
        validate_user_id(grantee_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if grantee_id == self.user_id() {
            return Err(ClientError::Invalid("you already own your records".into()));
        }
        // A grant the ledger cannot take must not be made at all.
        self.ledger().load()?;
        self.settle_pending().await?;
        let (grantee, _) = self.user_keys(grantee_id).await?;
        // With `not_before`, the grantee gets kfrags for a fresh epoch only:
        // every record written before the grant is under a key it has no
        // path to, so the SRS cannot re-encrypt one for it even if the
        // grantee holds its ciphertext (from an earlier grant, or a cloud
        // insider). CloudStorage and AccessPolicy still check the record's
        // creation time too.
        let current = if opts.not_before.is_some() {
            self.rotate(partition).await?
        } else {
            self.profile.current_epoch(partition)?
        };
        let epoch_min = if opts.not_before.is_some() {
            current
        } else {
            0
        };
        for epoch in epoch_min..=current {
            self.put_kfrags(partition, epoch, &grantee).await?;
        }
        let asked = proto::AccessGrant {
            owner_id: self.user_id().to_owned(),
            partition: partition.to_owned(),
            grantee_id: grantee_id.to_owned(),
            grantee_role: proto::Role::from(grantee.role) as i32,
            epoch_min,
            epoch_max: None,
            not_before: opts.not_before.unwrap_or(0),
            expires_at: opts.expires_at,
            granted_at: 0,
        };
        let resp = self
            .clients
            .policy
            .clone()
            .grant(unary(proto::GrantRequest {
                grant: Some(asked.clone()),
            }))
            .await
            .map_err(rpc("AccessPolicy"))?
            .into_inner();
        let granted = types::grant_of(resp.grant)?;
        let same = granted.owner_id == asked.owner_id.as_str()
            && granted.partition == asked.partition.as_str()
            && granted.grantee_id == asked.grantee_id.as_str()
            && granted.grantee_role == grantee.role
            && granted.epoch_min == asked.epoch_min
            && granted.epoch_max.is_none()
            && granted.not_before == asked.not_before
            && granted.expires_at == asked.expires_at;
        if !same {
            return Err(ClientError::Verification(format!(
                "AccessPolicy acknowledged another grant than the one asked for \
                 ({partition} to {grantee_id}); it is not in your ledger"
            )));
        }
        self.ledger().record_grant(&granted, unix_now())?;
        Ok(granted)
    }

    fn ledger(&self) -> ledger::Ledger {
        ledger::Ledger::new(&self.profile.home)
    }

    async fn put_kfrags(
        &self,
        partition: &str,
        epoch: u32,
        grantee: &UserKeys,
    ) -> Result<(), ClientError> {
        let (sk, pk) = self.master.partition_keys(partition, epoch)?;
        self.clients
            .nodes
            .put_grant(
                self.user_id(),
                partition,
                epoch,
                (&sk, &pk),
                &self.master.signing_key(),
                grantee,
                &self.pending(),
                &self.notices,
            )
            .await
    }

    /// Owed node operations first, so that a later decision is never
    /// overtaken by an earlier one; nodes still away stay owed.
    async fn settle_pending(&self) -> Result<(), ClientError> {
        let still = self.retry_pending().await?;
        if still > 0 {
            self.notices.push(format!(
                "{still} node operation(s) still owed (see `sesphr retry`)"
            ));
        }
        Ok(())
    }

    /// Withdraws a grant: first in the profile's grant ledger (so that no
    /// later rotation issues kfrags to the grantee, whatever AccessPolicy
    /// does), then at AccessPolicy (effective at once for every record, old
    /// or new), then the grantee's kfrags at the SRS. No record is
    /// re-encrypted, so the cost does not depend on how many records exist.
    pub async fn revoke(&self, partition: &str, grantee_id: &str) -> Result<Grant, ClientError> {
        check_partition(partition)?;
        validate_user_id(grantee_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.ledger()
            .record_revoke(partition, grantee_id, unix_now())?;
        // Shares still owed to this grantee are never delivered now.
        self.pending().drop_puts(partition, grantee_id)?;
        self.settle_pending().await?;
        let removed = self
            .clients
            .policy
            .clone()
            .revoke(unary(proto::RevokeRequest {
                partition: partition.to_owned(),
                grantee_id: grantee_id.to_owned(),
            }))
            .await
            .map_err(rpc("AccessPolicy"))?
            .into_inner();
        let removed = types::grant_of(removed.grant)?;
        if removed.owner_id != self.user_id()
            || removed.partition != partition
            || removed.grantee_id != grantee_id
        {
            return Err(ClientError::Verification(format!(
                "AccessPolicy acknowledged revoking another grant than {partition} from \
                 {grantee_id}; your ledger has it revoked, so no rotation will include them"
            )));
        }
        self.clients
            .nodes
            .delete_grant(partition, grantee_id, &self.pending(), &self.notices)
            .await?;
        Ok(removed)
    }

    /// Moves `partition` to a new key epoch: later uploads use a key that no
    /// revoked grantee ever had a kfrag for. The grantees active in the
    /// profile's own grant ledger (never AccessPolicy's list, which a lying
    /// server could pad or fail to shrink) get kfrags for the new epoch
    /// first; the new epoch is saved only when all succeeded.
    pub async fn rotate(&self, partition: &str) -> Result<u32, ClientError> {
        check_partition(partition)?;
        let next = self
            .profile
            .current_epoch(partition)?
            .checked_add(1)
            .ok_or_else(|| ClientError::Invalid("no epochs left".into()))?;
        self.settle_pending().await?;
        for grantee_id in self.ledger().active(partition, unix_now())? {
            let (grantee, _) = self.user_keys(&grantee_id).await?;
            self.put_kfrags(partition, next, &grantee).await?;
        }
        self.profile.set_epoch(partition, next)?;
        Ok(next)
    }

    /// Starts the grant ledger of a profile that has none (made before
    /// profiles kept one) from the grants AccessPolicy lists as given by
    /// this patient. Check that list first: whatever it holds is believed
    /// from now on. Returns how many grants were adopted.
    pub async fn adopt_ledger(&self) -> Result<usize, ClientError> {
        let grants = self.grants().await?;
        let mine: Vec<Grant> = grants
            .given
            .into_iter()
            .filter(|g| g.owner_id == self.user_id())
            .collect();
        self.ledger().adopt(&mine, unix_now())
    }

    /// The grants AccessPolicy lists, and where its list of the grants one
    /// gave disagrees with one's own ledger.
    pub async fn audit_grants(&self) -> Result<(Grants, Vec<Disagreement>), ClientError> {
        let grants = self.grants().await?;
        let mine: Vec<Grant> = grants
            .given
            .iter()
            .filter(|g| g.owner_id == self.user_id())
            .cloned()
            .collect();
        let d = ledger::compare(&self.ledger().load()?, &mine, unix_now());
        Ok((grants, d))
    }

    /// Deletes one of the patient's records.
    pub async fn delete(&self, record_id: &str) -> Result<Record, ClientError> {
        let resp = self
            .clients
            .cloud
            .clone()
            .delete_record(unary(proto::DeleteRecordRequest {
                record_id: record_id.to_owned(),
            }))
            .await
            .map_err(rpc("CloudStorage"))?
            .into_inner();
        types::record_of(resp.record)
    }
}

/// Reads `len` bytes, seals them segment by segment and sends the chunks.
fn seal_stream(
    mut reader: impl Read,
    len: u64,
    seg: u64,
    sealer: RecordSealer,
    send: upload::ChunkSink<'_>,
    progress: Progress,
) -> Result<(), ClientError> {
    let mut done = 0u64;
    let emit = |chunk: Vec<u8>| {
        done += chunk.len().saturating_sub(crypto::record::SEGMENT_OVERHEAD) as u64;
        progress(done);
        Ok(send(chunk))
    };
    let all_sent = upload::seal_all(&mut reader, len, seg, sealer, emit)?;
    // Not all sent: the upload call ended early, and its error is reported.
    if all_sent {
        upload::ensure_ended(&mut reader)?;
    }
    Ok(())
}

impl Patient {
    /// Splits a FHIR R4 Bundle into partitions and uploads one record (a
    /// FHIR Bundle) per partition. Returns `(partition, record)` pairs.
    pub async fn import_fhir(
        &self,
        bundle_json: &str,
        map: &crate::fhir::PartitionMap,
    ) -> Result<Vec<(String, Record)>, ClientError> {
        let parts = crate::fhir::split_bundle(bundle_json, map)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let mut out = Vec::with_capacity(parts.len());
        for (partition, bundle) in parts {
            let bytes = serde_json::to_vec_pretty(&bundle).expect("JSON serializes");
            let len = bytes.len() as u64;
            let rec = self
                .upload(&partition, std::io::Cursor::new(bytes), len, no_progress())
                .await?;
            out.push((partition, rec));
        }
        Ok(out)
    }
}

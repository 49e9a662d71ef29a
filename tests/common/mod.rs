//! An in-process mesh for integration tests: the three real services on
//! ephemeral loopback ports, a generated PKI and sled databases in a temp
//! dir, and real mTLS gRPC clients.

#![allow(dead_code)]

pub mod impostor;
pub mod process;

/// A binary of this workspace (`sesphr`, `sesphrd`), built by the same
/// `cargo` run into the same target directory as this test binary.
///
/// Integration tests of the root crate cannot name another crate's binaries
/// (`CARGO_BIN_EXE_*` covers the own package only), so `scripts/test.sh`
/// builds every binary before `cargo test`; running `cargo test` alone after
/// a change wants `cargo build --bins` first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

use std::path::PathBuf;
use std::time::Duration;

use sesphr_client::MeshFile;
use sesphr_client::raw::MeshClients;
use sesphr_client::{self as client, Patient, Practitioner, Session};
use sesphr_identity::{Identity, Role};
use sesphr_mesh::tls::TlsMaterial;
use sesphr_server::daemon::{DevMesh, DevOptions};
use tempfile::TempDir;
use zeroize::Zeroizing;

/// How long a test waits for the mesh to come up.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Sandbox {
    pub mesh: DevMesh,
    pub dir: TempDir,
}

impl Sandbox {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mesh = Self::start_in(dir.path().join("mesh")).await;
        Sandbox { mesh, dir }
    }

    pub async fn start_in(data_dir: PathBuf) -> DevMesh {
        let mut opts = DevOptions::new(data_dir).ephemeral();
        // Checkpoints and cosignatures four times a second: audit reads
        // wait less for a witnessed head.
        opts.audit_interval_ms = 250;
        let mesh = DevMesh::start(opts).await.expect("mesh starts");
        mesh.wait_ready(PATIENCE).await.expect("mesh ready");
        mesh
    }

    /// Stops the mesh and starts it again on the same data directory (new
    /// ports; the mesh file is rewritten).
    pub async fn restart(self) -> Self {
        let Sandbox { mesh, dir } = self;
        mesh.shutdown().await.expect("clean shutdown");
        let mesh = Self::start_in(dir.path().join("mesh")).await;
        Sandbox { mesh, dir }
    }

    /// Stops the mesh and hands back its directory (to edit a stopped
    /// service's storage); [`Sandbox::resume`] starts it again.
    pub async fn stop(self) -> TempDir {
        let Sandbox { mesh, dir } = self;
        mesh.shutdown().await.expect("clean shutdown");
        dir
    }

    /// Starts the mesh of a directory [`Sandbox::stop`] returned.
    pub async fn resume(dir: TempDir) -> Self {
        let mesh = Self::start_in(dir.path().join("mesh")).await;
        Sandbox { mesh, dir }
    }

    pub fn mesh_file(&self) -> MeshFile {
        self.mesh.mesh.clone()
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("users").join(user)
    }

    /// Enrols `user` as `role`: a patient registers herself (the dev mesh
    /// allows it), anyone else with the dev operator's invitation.
    pub async fn enroll(&self, user: &str, role: Role) {
        let invitation = self
            .admin()
            .enrolment_invitation(user, role)
            .await
            .expect("the operator invites");
        client::enroll(&self.mesh.mesh, &self.home(user), user, role, &invitation)
            .await
            .expect("enrollment succeeds");
    }

    /// The dev operator's invitation of `user` as `role`.
    pub async fn invite(&self, user: &str, role: Role) -> client::admin::Invitation {
        self.admin()
            .invite(user, role, None)
            .await
            .expect("the operator invites")
    }

    /// The dev operator, as the SDK's admin.
    pub fn admin(&self) -> client::admin::Admin {
        client::admin::Admin::open(&self.mesh.mesh, &self.operator_home()).expect("operator")
    }

    /// The dev operator profile (`DIR/operator`).
    pub fn operator_home(&self) -> PathBuf {
        sesphr_server::daemon::dev_operator_dir(&self.dir.path().join("mesh"))
    }

    pub async fn patient(&self, user: &str) -> Patient {
        if !sesphr_client::Profile::exists(&self.home(user)) {
            self.enroll(user, Role::Patient).await;
        }
        Patient::open(&self.mesh.mesh, &self.home(user)).expect("patient profile opens")
    }

    pub async fn practitioner(&self, user: &str, role: Role) -> Practitioner {
        if !sesphr_client::Profile::exists(&self.home(user)) {
            self.enroll(user, role).await;
        }
        Practitioner::open(&self.mesh.mesh, &self.home(user)).expect("profile opens")
    }

    pub fn session(&self, user: &str) -> Session {
        Session::open(&self.mesh.mesh, &self.home(user)).expect("profile opens")
    }

    /// Clients authenticated with a certificate the CA of its class (the
    /// user CA for users, the service CA otherwise) issues directly for
    /// `identity` (no enrollment): for walking the authorization table.
    pub fn clients_as(&self, identity: &Identity) -> MeshClients {
        let ca = self.mesh.pki.load_ca_for(identity).expect("CA loads");
        self.clients_signed_by(&ca, identity)
    }

    /// Clients authenticated with a certificate `ca` issues for `identity`
    /// (trusting the mesh's service CA for the servers).
    pub fn clients_signed_by(
        &self,
        ca: &sesphr_mesh::pki::CertificateAuthority,
        identity: &Identity,
    ) -> MeshClients {
        let issued = ca.issue(identity, &[], &[]).expect("issue");
        let service_ca = std::fs::read_to_string(self.mesh.pki.ca_cert()).expect("service CA");
        let tls =
            TlsMaterial::from_pem(issued.cert_pem, Zeroizing::new(issued.key_pem), service_ca)
                .expect("tls material");
        MeshClients::connect(&self.mesh.mesh, &tls).expect("clients")
    }

    /// Clients with the dev operator identity.
    pub fn operator(&self) -> MeshClients {
        let tls = self.mesh.identity_tls("operator").expect("operator tls");
        MeshClients::connect(&self.mesh.mesh, &tls).expect("clients")
    }

    pub async fn shutdown(self) {
        self.mesh.shutdown().await.expect("clean shutdown");
    }
}

/// Upload helper: bytes in memory.
pub async fn upload(p: &Patient, partition: &str, data: &[u8]) -> client::Record {
    p.upload(
        partition,
        std::io::Cursor::new(data.to_vec()),
        data.len() as u64,
        client::no_progress(),
    )
    .await
    .expect("upload succeeds")
}

/// Download helper: returns plaintext or the client error.
pub async fn download(s: &Session, record_id: &str) -> Result<Vec<u8>, client::ClientError> {
    let mut out = Vec::new();
    s.download(record_id, &mut out, client::no_progress())
        .await
        .map(|_| out)
}

/// A deduplicated upload's first message for `owner`'s record on the
/// `medical` partition, with a header made for a random key (the server
/// cannot tell) and an all-zero wrapped content key.
pub fn dedup_header(
    owner: &str,
    record_id: &str,
    blob_id: Vec<u8>,
    ownership_proof: Vec<u8>,
    size: u64,
) -> sesphr::proto::PutRecordRequest {
    use sesphr_crypto as crypto;
    let mut rng = rand::rng();
    let pk = crypto::SecretKey::generate(&mut rng).public_key();
    let (capsule, _) = crypto::encapsulate(&mut rng, &pk);
    let header = crypto::HeaderDraft::new(
        &mut rng,
        record_id.as_bytes(),
        owner.as_bytes(),
        "medical",
        0,
        capsule,
    )
    .expect("a header")
    .with_key_source(crypto::record::DemKeySource::External)
    .sign(&crypto::SigningKey::generate(&mut rng), b"");
    sesphr::proto::PutRecordRequest {
        part: Some(sesphr::proto::put_record_request::Part::Header(
            sesphr::proto::RecordUpload {
                record_id: record_id.to_owned(),
                partition: "medical".into(),
                epoch: 0,
                record_header: header.to_bytes(),
                ciphertext_size: size,
                blob_id,
                wrapped_content_key: vec![0; sesphr_dedup::convergent::WRAPPED_KEY_LEN],
                ownership_proof,
            },
        )),
    }
}

/// The content key the SDK derives for `data`: the mesh's OPRF evaluated
/// on the plaintext's SHA-256, blinded so no node learns anything of it,
/// from the first `threshold` nodes' checked shares.
pub async fn content_key(c: &MeshClients, data: &[u8]) -> sesphr_dedup::ContentKey {
    let digest = sesphr_dedup::content_digest(data);
    let (state, blinded) = sesphr_dedup::blind(&mut rand::rng(), &digest).expect("blinding");
    let mut shares = Vec::new();
    for node in &c.nodes.nodes[..c.nodes.threshold] {
        let bytes = node
            .client
            .clone()
            .evaluate_content_key(sesphr::proto::EvaluateContentKeyRequest {
                blinded_element: blinded.to_vec(),
            })
            .await
            .expect("the node evaluates its OPRF share")
            .into_inner()
            .share_evaluation;
        let share = sesphr_dedup::ShareEvaluation::from_bytes(&bytes).expect("a share evaluation");
        sesphr_dedup::verify_share(node.index.get(), &node.oprf_public_share, &blinded, &share)
            .expect("the share verifies");
        shares.push(share);
    }
    let evaluated =
        sesphr_dedup::combine(c.nodes.threshold as u8, &shares).expect("shares combine");
    let output = sesphr_dedup::finalize(state, &digest, &evaluated).expect("OPRF output");
    sesphr_dedup::content_key(&output)
}

/// Calls AccessPolicy's Check (which only the mesh's services may call)
/// asking whether mallory, a patient, may read alice's medical partition.
pub async fn check_mallory_reads_alice(
    c: &MeshClients,
) -> Result<sesphr::proto::CheckResponse, tonic::Status> {
    let req = sesphr::proto::CheckRequest {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: "mallory".into(),
        grantee_role: sesphr::proto::Role::Patient as i32,
        action: sesphr::proto::CheckAction::Read as i32,
        ..Default::default()
    };
    Ok(c.policy.clone().check(req).await?.into_inner())
}

/// Asks CloudStorage whether `blob_id` is stored (and, if so, for an
/// ownership challenge).
pub async fn query_blob(c: &MeshClients, blob_id: &[u8]) -> sesphr::proto::QueryBlobResponse {
    c.cloud
        .clone()
        .query_blob(sesphr::proto::QueryBlobRequest {
            blob_id: blob_id.to_vec(),
        })
        .await
        .expect("QueryBlob answers")
        .into_inner()
}

/// Retries `f` until it succeeds (a process just started, or a restarted
/// peer reached again after the channel's reconnect back-off), at most
/// `patience`.
pub async fn eventually<T, F, Fut>(patience: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, client::ClientError>>,
{
    let deadline = std::time::Instant::now() + patience;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("did not succeed within {patience:?}: {e}"),
        }
    }
}

/// The invitation `id` enrols as `role` with on a dev mesh laid out by
/// `sesphrd dev` (the mesh file's CA is `DIR/pki/ca.pem`, the operator
/// profile `DIR/operator`): none for a patient (self-registration), the
/// dev operator's otherwise.
pub async fn dev_invitation(
    mesh: &MeshFile,
    id: &str,
    role: Role,
) -> Result<String, client::ClientError> {
    let dir = mesh
        .ca
        .parent()
        .and_then(|pki| pki.parent())
        .expect("a dev mesh file names DIR/pki/ca.pem");
    let ops = client::admin::Admin::open(mesh, &sesphr_server::daemon::dev_operator_dir(dir))?;
    Ok(ops.enrolment_invitation(id, role).await?.to_string())
}

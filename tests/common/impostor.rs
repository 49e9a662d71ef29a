//! Impostor servers: real gRPC servers on loopback that stand where a mesh
//! service should be, forward every call to the real service, and tamper
//! with whichever call a test chooses. They are how the tests show that a
//! client believes nothing an untrusted server says.
//!
//! An impostor
//!
//! - listens on `127.0.0.1` with a certificate from the sandbox's own mesh
//!   CA, for whatever identity the test picks: normally the real service's
//!   SPIFFE ID ([`server_tls`]), so the client's TLS checks pass and only
//!   what the impostor *says* can give it away; or another identity, to
//!   check that the client refuses it;
//! - implements the generated server trait of CloudStorage, the SRS setup
//!   service, a re-encryption node or AccessPolicy, forwarding each RPC to the real service through an
//!   [`Upstream`]: real clients with the victim's own TLS material
//!   ([`upstream_as`]), so the real service authorizes each forwarded call
//!   as the victim (or with a service's material, [`upstream_with`], to
//!   stand between two services);
//! - runs a test's [`Hook`] instead of the plain forward for any RPC whose
//!   field is set in the service's hooks struct ([`CloudStorageHooks`],
//!   [`SrsHooks`], [`SrsNodeHooks`], [`AccessPolicyHooks`]). A hook gets the upstream and the
//!   request and returns the reply: it can change the request and call
//!   [`forward`], change the forwarded reply, or answer on its own —
//!   including a reply stream that never ends ([`endless`]) or stalls
//!   ([`stalled`], [`then_stall`]).
//!
//! [`Silent`] listeners are the other kind of bad server: one accepts TCP
//! and never speaks TLS, one completes TLS and then never answers.
//! [`redirect`] (and [`redirect_node`]) rewrites a [`MeshFile`] so that one
//! endpoint points at an impostor (or a silent listener); [`with_timeouts`] shortens the client's
//! deadlines and [`write_mesh_file`] saves it for the `sesphr` binary.
//!
//! ```ignore
//! use common::impostor::{self, CloudStorageHooks, Impostor, forward, hook};
//! use sesphr_identity::Service;
//!
//! let s = Sandbox::start().await;
//! let alice = s.patient("alice").await;
//! // CloudStorage that lists a record of another partition than asked.
//! let hooks = CloudStorageHooks {
//!     list_records: hook(|up, req| async move {
//!         let mut reply = forward::list_records(up, req).await?;
//!         for r in &mut reply.get_mut().records {
//!             r.partition = "psychiatry".into();
//!         }
//!         Ok(reply)
//!     }),
//!     ..Default::default()
//! };
//! let fake = Impostor::cloud_storage(&s, "alice", hooks).await;
//! let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
//! let session = Session::open(&mesh, &s.home("alice")).unwrap();
//! assert!(session.list(None, Some("medical")).await.is_err());
//! // Every call the impostor served, in order:
//! assert_eq!(fake.calls(), ["ListRecords"]);
//! ```
//!
//! Everything is loopback; an impostor stops when dropped.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use sesphr::proto::{
    self, access_policy_server, cloud_storage_server, srs_node_server, srs_server,
};
use sesphr_client::raw::MeshClients;
use sesphr_client::{MeshFile, Profile, TimeoutSettings};
use sesphr_identity::{Identity, NodeIndex, Service};
use sesphr_mesh::tls::TlsMaterial;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

use super::Sandbox;

/// Largest message an impostor takes or sends (above the SDK's own).
const MAX_MESSAGE: usize = 16 << 20;

/// What a hook or a forward answers.
pub type Reply<T> = Result<Response<T>, Status>;
/// A reply stream (GetRecord, ListAudit): anything that yields messages.
pub type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
/// The real services, as the impostor reaches them (the victim's clients).
pub type Upstream = MeshClients;
/// A test's answer to one RPC: given the upstream and the request, the
/// reply.
pub type Hook<Req, Resp> = Arc<
    dyn Fn(Upstream, Request<Req>) -> Pin<Box<dyn Future<Output = Reply<Resp>> + Send>>
        + Send
        + Sync,
>;

/// A hook from an async closure, ready for a hooks struct's field.
pub fn hook<Req, Resp, F, Fut>(f: F) -> Option<Hook<Req, Resp>>
where
    F: Fn(Upstream, Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply<Resp>> + Send + 'static,
{
    Some(Arc::new(move |up, req| Box::pin(f(up, req))))
}

/// A reply stream of `items`, then the end.
pub fn reply_stream<T: Send + 'static>(items: Vec<T>) -> ReplyStream<T> {
    Box::pin(futures::stream::iter(items.into_iter().map(Ok)))
}

/// A reply stream that never yields anything and never ends.
pub fn stalled<T: Send + 'static>() -> ReplyStream<T> {
    Box::pin(futures::stream::pending())
}

/// `stream`, then silence forever (the stream never ends).
pub fn then_stall<T: Send + 'static>(stream: ReplyStream<T>) -> ReplyStream<T> {
    Box::pin(stream.chain(futures::stream::pending()))
}

/// An endless reply stream: `make(i)` for i = 0, 1, 2, … (yielding to the
/// runtime between messages).
pub fn endless<T: Send + 'static>(make: impl FnMut(u64) -> T + Send + 'static) -> ReplyStream<T> {
    let make = Arc::new(Mutex::new(make));
    Box::pin(futures::stream::iter(0u64..).then(move |i| {
        let make = make.clone();
        async move {
            tokio::task::yield_now().await;
            Ok((make.lock().unwrap())(i))
        }
    }))
}

/// Server TLS material for `identity` from the sandbox's service CA, valid
/// for `localhost` and `127.0.0.1` (where every test endpoint is). Its CA
/// bundle holds both roots, so the impostor accepts users and services
/// alike (it is a server in bad faith, not a careful one).
pub fn server_tls(s: &Sandbox, identity: &Identity) -> TlsMaterial {
    let ca = s.mesh.pki.load_ca().expect("the sandbox CA loads");
    let issued = ca
        .issue(identity, &["localhost"], &[IpAddr::from([127, 0, 0, 1])])
        .expect("a certificate");
    let user_ca = std::fs::read_to_string(s.mesh.pki.user_ca_cert()).expect("the user CA");
    TlsMaterial::from_pem(
        issued.cert_pem,
        Zeroizing::new(issued.key_pem),
        format!("{}{user_ca}", ca.cert_pem()),
    )
    .expect("TLS material")
}

/// The identity of `service` in the sandbox's trust domain.
pub fn service_identity(s: &Sandbox, service: Service) -> Identity {
    Identity::service(&s.mesh.mesh.trust_domain, service)
}

/// The real mesh, reached as `user` (enrolled in the sandbox): the real
/// services authorize every forwarded call as that user.
pub fn upstream_as(s: &Sandbox, user: &str) -> Upstream {
    let tls = Profile::load(&s.home(user))
        .and_then(|p| p.tls())
        .expect("the user's profile and TLS material");
    upstream_with(&s.mesh_file(), &tls)
}

/// The real mesh of `mesh`, reached with `tls` (a user's, or a service's
/// own, to stand between two services).
pub fn upstream_with(mesh: &MeshFile, tls: &TlsMaterial) -> Upstream {
    MeshClients::connect(mesh, tls).expect("upstream clients")
}

/// `mesh` with `service`'s endpoint at `url`.
pub fn redirect(mesh: &MeshFile, service: Service, url: &str) -> MeshFile {
    let mut m = mesh.clone();
    match service {
        Service::CloudStorage => m.cloud_storage = url.to_owned(),
        Service::Srs => m.srs = url.to_owned(),
        Service::AccessPolicy => m.access_policy = url.to_owned(),
    }
    m
}

/// `mesh` with re-encryption node `index`'s endpoint at `url`.
pub fn redirect_node(mesh: &MeshFile, index: u8, url: &str) -> MeshFile {
    let mut m = mesh.clone();
    let node = m
        .srs_nodes
        .iter_mut()
        .find(|n| n.index == index)
        .expect("the mesh has that node");
    node.url = url.to_owned();
    m
}

/// The identity of re-encryption node `index` in the sandbox's trust domain.
pub fn node_identity(s: &Sandbox, index: u8) -> Identity {
    Identity::srs_node(
        &s.mesh.mesh.trust_domain,
        NodeIndex::new(u32::from(index)).expect("a node index"),
    )
}

/// `upstream` narrowed to node `index`: what a node impostor forwards to
/// (its `nodes` holds that one node).
pub fn upstream_node(mut upstream: Upstream, index: u8) -> Upstream {
    upstream.nodes.nodes.retain(|n| n.index.get() == index);
    assert_eq!(upstream.nodes.nodes.len(), 1, "the mesh has node {index}");
    upstream
}

/// `mesh` with the client deadlines `timeouts`.
pub fn with_timeouts(mesh: MeshFile, timeouts: TimeoutSettings) -> MeshFile {
    MeshFile {
        timeouts: Some(timeouts),
        ..mesh
    }
}

/// Deadlines of `ms` milliseconds each, for tests that must fail in seconds.
pub fn short_timeouts(ms: u64) -> TimeoutSettings {
    TimeoutSettings {
        connect_ms: Some(ms),
        unary_ms: Some(ms),
        first_message_ms: Some(ms),
        idle_ms: Some(ms),
    }
}

/// Writes `mesh` (its CA path absolute) to `path`, for the `sesphr` binary.
pub fn write_mesh_file(mesh: &MeshFile, path: &Path) {
    assert!(
        mesh.ca.is_absolute(),
        "a written mesh file needs an absolute CA path"
    );
    std::fs::write(path, toml::to_string(mesh).expect("mesh file serializes"))
        .expect("mesh file written");
}

// ---- the impostor server ------------------------------------------------------

/// A running impostor (stops when dropped).
pub struct Impostor {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`, for a mesh file.
    pub url: String,
    calls: Calls,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

type Calls = Arc<Mutex<Vec<&'static str>>>;

fn note(calls: &Calls, method: &'static str) {
    calls.lock().unwrap().push(method);
}

impl Impostor {
    /// The RPCs it served so far, in order (method names, e.g. `GetRecord`).
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }

    /// A CloudStorage impostor presenting the real CloudStorage identity,
    /// forwarding as `user`.
    pub async fn cloud_storage(s: &Sandbox, user: &str, hooks: CloudStorageHooks) -> Self {
        let tls = server_tls(s, &service_identity(s, Service::CloudStorage));
        Self::serve_cloud_storage(&tls, upstream_as(s, user), hooks).await
    }

    /// An SRS impostor presenting the real SRS identity, forwarding as
    /// `user`.
    pub async fn srs(s: &Sandbox, user: &str, hooks: SrsHooks) -> Self {
        let tls = server_tls(s, &service_identity(s, Service::Srs));
        Self::serve_srs(&tls, upstream_as(s, user), hooks).await
    }

    /// An impostor of re-encryption node `index`, presenting that node's
    /// identity, forwarding to the real node `index` as `user`.
    pub async fn srs_node(s: &Sandbox, user: &str, index: u8, hooks: SrsNodeHooks) -> Self {
        let tls = server_tls(s, &node_identity(s, index));
        Self::serve_srs_node(&tls, upstream_node(upstream_as(s, user), index), hooks).await
    }

    /// An AccessPolicy impostor presenting the real AccessPolicy identity,
    /// forwarding as `user`.
    pub async fn access_policy(s: &Sandbox, user: &str, hooks: AccessPolicyHooks) -> Self {
        let tls = server_tls(s, &service_identity(s, Service::AccessPolicy));
        Self::serve_access_policy(&tls, upstream_as(s, user), hooks).await
    }

    /// CloudStorage, presenting `tls` (any identity), forwarding to `upstream`.
    pub async fn serve_cloud_storage(
        tls: &TlsMaterial,
        upstream: Upstream,
        hooks: CloudStorageHooks,
    ) -> Self {
        let calls = Calls::default();
        let svc = cloud_storage_server::CloudStorageServer::new(FakeCloudStorage {
            upstream,
            hooks,
            calls: calls.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        Self::serve(tls, calls, tonic::service::Routes::new(svc)).await
    }

    /// The SRS, presenting `tls` (any identity), forwarding to `upstream`.
    pub async fn serve_srs(tls: &TlsMaterial, upstream: Upstream, hooks: SrsHooks) -> Self {
        let calls = Calls::default();
        let svc = srs_server::SrsServer::new(FakeSrs {
            upstream,
            hooks,
            calls: calls.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        Self::serve(tls, calls, tonic::service::Routes::new(svc)).await
    }

    /// A re-encryption node, presenting `tls` (any identity), forwarding to
    /// `upstream`'s one node (see [`upstream_node`]).
    pub async fn serve_srs_node(
        tls: &TlsMaterial,
        upstream: Upstream,
        hooks: SrsNodeHooks,
    ) -> Self {
        let calls = Calls::default();
        let svc = srs_node_server::SrsNodeServer::new(FakeSrsNode {
            upstream,
            hooks,
            calls: calls.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        Self::serve(tls, calls, tonic::service::Routes::new(svc)).await
    }

    /// AccessPolicy, presenting `tls` (any identity), forwarding to
    /// `upstream`.
    pub async fn serve_access_policy(
        tls: &TlsMaterial,
        upstream: Upstream,
        hooks: AccessPolicyHooks,
    ) -> Self {
        let calls = Calls::default();
        let svc = access_policy_server::AccessPolicyServer::new(FakeAccessPolicy {
            upstream,
            hooks,
            calls: calls.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        Self::serve(tls, calls, tonic::service::Routes::new(svc)).await
    }

    async fn serve(tls: &TlsMaterial, calls: Calls, routes: tonic::service::Routes) -> Self {
        sesphr_mesh::tls::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let (stop, stopped) = oneshot::channel::<()>();
        // Client certificates are optional: an SRS impostor also serves
        // enrollment.
        let server = tonic::transport::Server::builder()
            .tls_config(tls.server_config(false))
            .expect("server TLS")
            .add_routes(routes);
        let task = tokio::spawn(async move {
            let _ = server
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Impostor {
            addr,
            url: format!("https://{addr}"),
            calls,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Streams a hook left stalled would hold a graceful shutdown.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn dispatch<Req, Resp, Fut>(
    hook: &Option<Hook<Req, Resp>>,
    upstream: &Upstream,
    req: Request<Req>,
    forward: impl FnOnce(Upstream, Request<Req>) -> Fut,
) -> Reply<Resp>
where
    Fut: Future<Output = Reply<Resp>>,
{
    match hook {
        Some(h) => h(upstream.clone(), req).await,
        None => forward(upstream.clone(), req).await,
    }
}

/// The plain forward of each RPC to the real service (what an impostor
/// does without a hook; hooks call these to tamper with a real reply).
/// Request metadata is not forwarded: the upstream clients set their own.
pub mod forward {
    use super::*;

    fn stream<T: Send + 'static>(s: Streaming<T>) -> ReplyStream<T> {
        Box::pin(s)
    }

    // CloudStorage.

    /// Forwards an upload's messages, ending at the first broken one.
    pub async fn put_record_stream(
        up: Upstream,
        messages: impl Stream<Item = proto::PutRecordRequest> + Send + 'static,
    ) -> Reply<proto::PutRecordResponse> {
        up.cloud.clone().put_record(messages).await
    }

    pub async fn put_record(
        up: Upstream,
        req: Request<Streaming<proto::PutRecordRequest>>,
    ) -> Reply<proto::PutRecordResponse> {
        let messages = req
            .into_inner()
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(|m| futures::future::ready(m.ok()));
        put_record_stream(up, messages).await
    }

    pub async fn get_record(
        up: Upstream,
        req: Request<proto::GetRecordRequest>,
    ) -> Reply<ReplyStream<proto::GetRecordResponse>> {
        let s = up.cloud.clone().get_record(req.into_inner()).await?;
        Ok(Response::new(stream(s.into_inner())))
    }

    pub async fn list_records(
        up: Upstream,
        req: Request<proto::ListRecordsRequest>,
    ) -> Reply<proto::ListRecordsResponse> {
        up.cloud.clone().list_records(req.into_inner()).await
    }

    pub async fn delete_record(
        up: Upstream,
        req: Request<proto::DeleteRecordRequest>,
    ) -> Reply<proto::DeleteRecordResponse> {
        up.cloud.clone().delete_record(req.into_inner()).await
    }

    pub async fn query_blob(
        up: Upstream,
        req: Request<proto::QueryBlobRequest>,
    ) -> Reply<proto::QueryBlobResponse> {
        up.cloud.clone().query_blob(req.into_inner()).await
    }

    // SRS.

    pub async fn enroll(
        up: Upstream,
        req: Request<proto::EnrollRequest>,
    ) -> Reply<proto::EnrollResponse> {
        up.srs.clone().enroll(req.into_inner()).await
    }

    pub async fn get_user(
        up: Upstream,
        req: Request<proto::GetUserRequest>,
    ) -> Reply<proto::UserInfo> {
        up.srs.clone().get_user(req.into_inner()).await
    }

    pub async fn invite(
        up: Upstream,
        req: Request<proto::InviteRequest>,
    ) -> Reply<proto::InviteResponse> {
        up.srs.clone().invite(req.into_inner()).await
    }

    pub async fn renew(
        up: Upstream,
        req: Request<proto::RenewRequest>,
    ) -> Reply<proto::RenewResponse> {
        up.srs.clone().renew(req.into_inner()).await
    }

    pub async fn list_devices(
        up: Upstream,
        req: Request<proto::ListDevicesRequest>,
    ) -> Reply<proto::ListDevicesResponse> {
        up.srs.clone().list_devices(req.into_inner()).await
    }

    pub async fn remove_device(
        up: Upstream,
        req: Request<proto::RemoveDeviceRequest>,
    ) -> Reply<proto::RemoveDeviceResponse> {
        up.srs.clone().remove_device(req.into_inner()).await
    }

    pub async fn set_recovery(
        up: Upstream,
        req: Request<proto::SetRecoveryRequest>,
    ) -> Reply<proto::SetRecoveryResponse> {
        up.srs.clone().set_recovery(req.into_inner()).await
    }

    pub async fn get_recovery(
        up: Upstream,
        req: Request<proto::GetRecoveryRequest>,
    ) -> Reply<proto::RecoverySetup> {
        up.srs.clone().get_recovery(req.into_inner()).await
    }

    pub async fn get_recovery_share(
        up: Upstream,
        req: Request<proto::GetRecoveryShareRequest>,
    ) -> Reply<proto::GetRecoveryShareResponse> {
        up.srs.clone().get_recovery_share(req.into_inner()).await
    }

    // A re-encryption node (the upstream's one node, see `upstream_node`).

    fn node(up: &Upstream) -> proto::srs_node_client::SrsNodeClient<sesphr_client::TimedChannel> {
        up.nodes.nodes[0].client.clone()
    }

    pub async fn put_kfrag(
        up: Upstream,
        req: Request<proto::PutKfragRequest>,
    ) -> Reply<proto::PutKfragResponse> {
        node(&up).put_kfrag(req.into_inner()).await
    }

    pub async fn delete_kfrags(
        up: Upstream,
        req: Request<proto::DeleteKfragsRequest>,
    ) -> Reply<proto::DeleteKfragsResponse> {
        node(&up).delete_kfrags(req.into_inner()).await
    }

    pub async fn re_encrypt(
        up: Upstream,
        req: Request<proto::ReEncryptRequest>,
    ) -> Reply<proto::ReEncryptResponse> {
        node(&up).re_encrypt(req.into_inner()).await
    }

    pub async fn evaluate_content_key(
        up: Upstream,
        req: Request<proto::EvaluateContentKeyRequest>,
    ) -> Reply<proto::EvaluateContentKeyResponse> {
        node(&up).evaluate_content_key(req.into_inner()).await
    }

    // AccessPolicy.

    pub async fn grant(
        up: Upstream,
        req: Request<proto::GrantRequest>,
    ) -> Reply<proto::GrantResponse> {
        up.policy.clone().grant(req.into_inner()).await
    }

    pub async fn revoke(
        up: Upstream,
        req: Request<proto::RevokeRequest>,
    ) -> Reply<proto::RevokeResponse> {
        up.policy.clone().revoke(req.into_inner()).await
    }

    pub async fn check(
        up: Upstream,
        req: Request<proto::CheckRequest>,
    ) -> Reply<proto::CheckResponse> {
        up.policy.clone().check(req.into_inner()).await
    }

    pub async fn list_grants(
        up: Upstream,
        req: Request<proto::ListGrantsRequest>,
    ) -> Reply<proto::ListGrantsResponse> {
        up.policy.clone().list_grants(req.into_inner()).await
    }

    pub async fn list_audit(
        up: Upstream,
        req: Request<proto::ListAuditRequest>,
    ) -> Reply<ReplyStream<proto::AuditEntry>> {
        let s = up.policy.clone().list_audit(req.into_inner()).await?;
        Ok(Response::new(stream(s.into_inner())))
    }

    pub async fn verify_audit(
        up: Upstream,
        req: Request<proto::VerifyAuditRequest>,
    ) -> Reply<proto::VerifyAuditResponse> {
        up.policy.clone().verify_audit(req.into_inner()).await
    }

    pub async fn record_event(
        up: Upstream,
        req: Request<proto::RecordEventRequest>,
    ) -> Reply<proto::RecordEventResponse> {
        up.policy.clone().record_event(req.into_inner()).await
    }

    pub async fn get_checkpoint(
        up: Upstream,
        req: Request<proto::GetCheckpointRequest>,
    ) -> Reply<proto::GetCheckpointResponse> {
        up.policy.clone().get_checkpoint(req.into_inner()).await
    }

    pub async fn get_inclusion_proofs(
        up: Upstream,
        req: Request<proto::GetInclusionProofsRequest>,
    ) -> Reply<proto::GetInclusionProofsResponse> {
        up.policy
            .clone()
            .get_inclusion_proofs(req.into_inner())
            .await
    }

    pub async fn get_consistency_proof(
        up: Upstream,
        req: Request<proto::GetConsistencyProofRequest>,
    ) -> Reply<proto::GetConsistencyProofResponse> {
        up.policy
            .clone()
            .get_consistency_proof(req.into_inner())
            .await
    }

    pub async fn add_cosignature(
        up: Upstream,
        req: Request<proto::AddCosignatureRequest>,
    ) -> Reply<proto::AddCosignatureResponse> {
        up.policy.clone().add_cosignature(req.into_inner()).await
    }

    pub async fn disable_user(
        up: Upstream,
        req: Request<proto::SetUserStatusRequest>,
    ) -> Reply<proto::SetUserStatusResponse> {
        up.policy.clone().disable_user(req.into_inner()).await
    }

    pub async fn enable_user(
        up: Upstream,
        req: Request<proto::SetUserStatusRequest>,
    ) -> Reply<proto::SetUserStatusResponse> {
        up.policy.clone().enable_user(req.into_inner()).await
    }

    pub async fn get_deny_list(
        up: Upstream,
        req: Request<proto::GetDenyListRequest>,
    ) -> Reply<proto::GetDenyListResponse> {
        up.policy.clone().get_deny_list(req.into_inner()).await
    }

    pub async fn revoke_device(
        up: Upstream,
        req: Request<proto::RevokeDeviceRequest>,
    ) -> Reply<proto::RevokeDeviceResponse> {
        up.policy.clone().revoke_device(req.into_inner()).await
    }
}

// ---- CloudStorage ---------------------------------------------------------------

/// A CloudStorage impostor's hooks: `None` forwards the RPC as is.
#[derive(Default, Clone)]
pub struct CloudStorageHooks {
    pub put_record: Option<Hook<Streaming<proto::PutRecordRequest>, proto::PutRecordResponse>>,
    pub get_record: Option<Hook<proto::GetRecordRequest, ReplyStream<proto::GetRecordResponse>>>,
    pub list_records: Option<Hook<proto::ListRecordsRequest, proto::ListRecordsResponse>>,
    pub delete_record: Option<Hook<proto::DeleteRecordRequest, proto::DeleteRecordResponse>>,
    pub query_blob: Option<Hook<proto::QueryBlobRequest, proto::QueryBlobResponse>>,
}

/// The body of every impostor RPC: note the call, then run the test's hook
/// for it or forward it unchanged.
macro_rules! relay {
    ($self:ident, $name:literal, $rpc:ident, $req:ident) => {{
        note(&$self.calls, $name);
        dispatch(&$self.hooks.$rpc, &$self.upstream, $req, forward::$rpc).await
    }};
}

struct FakeCloudStorage {
    upstream: Upstream,
    hooks: CloudStorageHooks,
    calls: Calls,
}

#[tonic::async_trait]
impl cloud_storage_server::CloudStorage for FakeCloudStorage {
    async fn put_record(
        &self,
        req: Request<Streaming<proto::PutRecordRequest>>,
    ) -> Reply<proto::PutRecordResponse> {
        relay!(self, "PutRecord", put_record, req)
    }

    type GetRecordStream = ReplyStream<proto::GetRecordResponse>;

    async fn get_record(
        &self,
        req: Request<proto::GetRecordRequest>,
    ) -> Reply<Self::GetRecordStream> {
        relay!(self, "GetRecord", get_record, req)
    }

    async fn list_records(
        &self,
        req: Request<proto::ListRecordsRequest>,
    ) -> Reply<proto::ListRecordsResponse> {
        relay!(self, "ListRecords", list_records, req)
    }

    async fn delete_record(
        &self,
        req: Request<proto::DeleteRecordRequest>,
    ) -> Reply<proto::DeleteRecordResponse> {
        relay!(self, "DeleteRecord", delete_record, req)
    }

    async fn query_blob(
        &self,
        req: Request<proto::QueryBlobRequest>,
    ) -> Reply<proto::QueryBlobResponse> {
        relay!(self, "QueryBlob", query_blob, req)
    }
}

// ---- SRS --------------------------------------------------------------------------

/// An SRS impostor's hooks: `None` forwards the RPC as is.
#[derive(Default, Clone)]
pub struct SrsHooks {
    pub enroll: Option<Hook<proto::EnrollRequest, proto::EnrollResponse>>,
    pub get_user: Option<Hook<proto::GetUserRequest, proto::UserInfo>>,
    pub invite: Option<Hook<proto::InviteRequest, proto::InviteResponse>>,
    pub renew: Option<Hook<proto::RenewRequest, proto::RenewResponse>>,
    pub list_devices: Option<Hook<proto::ListDevicesRequest, proto::ListDevicesResponse>>,
    pub remove_device: Option<Hook<proto::RemoveDeviceRequest, proto::RemoveDeviceResponse>>,
    pub set_recovery: Option<Hook<proto::SetRecoveryRequest, proto::SetRecoveryResponse>>,
    pub get_recovery: Option<Hook<proto::GetRecoveryRequest, proto::RecoverySetup>>,
    pub get_recovery_share:
        Option<Hook<proto::GetRecoveryShareRequest, proto::GetRecoveryShareResponse>>,
}

/// A re-encryption node impostor's hooks: `None` forwards the RPC as is.
#[derive(Default, Clone)]
pub struct SrsNodeHooks {
    pub put_kfrag: Option<Hook<proto::PutKfragRequest, proto::PutKfragResponse>>,
    pub delete_kfrags: Option<Hook<proto::DeleteKfragsRequest, proto::DeleteKfragsResponse>>,
    pub re_encrypt: Option<Hook<proto::ReEncryptRequest, proto::ReEncryptResponse>>,
    pub evaluate_content_key:
        Option<Hook<proto::EvaluateContentKeyRequest, proto::EvaluateContentKeyResponse>>,
}

struct FakeSrs {
    upstream: Upstream,
    hooks: SrsHooks,
    calls: Calls,
}

#[tonic::async_trait]
impl srs_server::Srs for FakeSrs {
    async fn enroll(&self, req: Request<proto::EnrollRequest>) -> Reply<proto::EnrollResponse> {
        relay!(self, "Enroll", enroll, req)
    }

    async fn get_user(&self, req: Request<proto::GetUserRequest>) -> Reply<proto::UserInfo> {
        relay!(self, "GetUser", get_user, req)
    }

    async fn invite(&self, req: Request<proto::InviteRequest>) -> Reply<proto::InviteResponse> {
        relay!(self, "Invite", invite, req)
    }

    async fn renew(&self, req: Request<proto::RenewRequest>) -> Reply<proto::RenewResponse> {
        relay!(self, "Renew", renew, req)
    }

    async fn list_devices(
        &self,
        req: Request<proto::ListDevicesRequest>,
    ) -> Reply<proto::ListDevicesResponse> {
        relay!(self, "ListDevices", list_devices, req)
    }

    async fn remove_device(
        &self,
        req: Request<proto::RemoveDeviceRequest>,
    ) -> Reply<proto::RemoveDeviceResponse> {
        relay!(self, "RemoveDevice", remove_device, req)
    }

    async fn set_recovery(
        &self,
        req: Request<proto::SetRecoveryRequest>,
    ) -> Reply<proto::SetRecoveryResponse> {
        relay!(self, "SetRecovery", set_recovery, req)
    }

    async fn get_recovery(
        &self,
        req: Request<proto::GetRecoveryRequest>,
    ) -> Reply<proto::RecoverySetup> {
        relay!(self, "GetRecovery", get_recovery, req)
    }

    async fn get_recovery_share(
        &self,
        req: Request<proto::GetRecoveryShareRequest>,
    ) -> Reply<proto::GetRecoveryShareResponse> {
        relay!(self, "GetRecoveryShare", get_recovery_share, req)
    }
}

struct FakeSrsNode {
    upstream: Upstream,
    hooks: SrsNodeHooks,
    calls: Calls,
}

#[tonic::async_trait]
impl srs_node_server::SrsNode for FakeSrsNode {
    async fn put_kfrag(
        &self,
        req: Request<proto::PutKfragRequest>,
    ) -> Reply<proto::PutKfragResponse> {
        relay!(self, "PutKfrag", put_kfrag, req)
    }

    async fn delete_kfrags(
        &self,
        req: Request<proto::DeleteKfragsRequest>,
    ) -> Reply<proto::DeleteKfragsResponse> {
        relay!(self, "DeleteKfrags", delete_kfrags, req)
    }

    async fn re_encrypt(
        &self,
        req: Request<proto::ReEncryptRequest>,
    ) -> Reply<proto::ReEncryptResponse> {
        relay!(self, "ReEncrypt", re_encrypt, req)
    }

    async fn evaluate_content_key(
        &self,
        req: Request<proto::EvaluateContentKeyRequest>,
    ) -> Reply<proto::EvaluateContentKeyResponse> {
        relay!(self, "EvaluateContentKey", evaluate_content_key, req)
    }
}

// ---- AccessPolicy -------------------------------------------------------------------

/// An AccessPolicy impostor's hooks: `None` forwards the RPC as is.
#[derive(Default, Clone)]
pub struct AccessPolicyHooks {
    pub grant: Option<Hook<proto::GrantRequest, proto::GrantResponse>>,
    pub revoke: Option<Hook<proto::RevokeRequest, proto::RevokeResponse>>,
    pub check: Option<Hook<proto::CheckRequest, proto::CheckResponse>>,
    pub list_grants: Option<Hook<proto::ListGrantsRequest, proto::ListGrantsResponse>>,
    pub list_audit: Option<Hook<proto::ListAuditRequest, ReplyStream<proto::AuditEntry>>>,
    pub verify_audit: Option<Hook<proto::VerifyAuditRequest, proto::VerifyAuditResponse>>,
    pub record_event: Option<Hook<proto::RecordEventRequest, proto::RecordEventResponse>>,
    pub get_checkpoint: Option<Hook<proto::GetCheckpointRequest, proto::GetCheckpointResponse>>,
    pub get_inclusion_proofs:
        Option<Hook<proto::GetInclusionProofsRequest, proto::GetInclusionProofsResponse>>,
    pub get_consistency_proof:
        Option<Hook<proto::GetConsistencyProofRequest, proto::GetConsistencyProofResponse>>,
    pub add_cosignature: Option<Hook<proto::AddCosignatureRequest, proto::AddCosignatureResponse>>,
    pub disable_user: Option<Hook<proto::SetUserStatusRequest, proto::SetUserStatusResponse>>,
    pub enable_user: Option<Hook<proto::SetUserStatusRequest, proto::SetUserStatusResponse>>,
    pub get_deny_list: Option<Hook<proto::GetDenyListRequest, proto::GetDenyListResponse>>,
    pub revoke_device: Option<Hook<proto::RevokeDeviceRequest, proto::RevokeDeviceResponse>>,
}

struct FakeAccessPolicy {
    upstream: Upstream,
    hooks: AccessPolicyHooks,
    calls: Calls,
}

#[tonic::async_trait]
impl access_policy_server::AccessPolicy for FakeAccessPolicy {
    async fn grant(&self, req: Request<proto::GrantRequest>) -> Reply<proto::GrantResponse> {
        relay!(self, "Grant", grant, req)
    }

    async fn revoke(&self, req: Request<proto::RevokeRequest>) -> Reply<proto::RevokeResponse> {
        relay!(self, "Revoke", revoke, req)
    }

    async fn check(&self, req: Request<proto::CheckRequest>) -> Reply<proto::CheckResponse> {
        relay!(self, "Check", check, req)
    }

    async fn list_grants(
        &self,
        req: Request<proto::ListGrantsRequest>,
    ) -> Reply<proto::ListGrantsResponse> {
        relay!(self, "ListGrants", list_grants, req)
    }

    type ListAuditStream = ReplyStream<proto::AuditEntry>;

    async fn list_audit(
        &self,
        req: Request<proto::ListAuditRequest>,
    ) -> Reply<Self::ListAuditStream> {
        relay!(self, "ListAudit", list_audit, req)
    }

    async fn verify_audit(
        &self,
        req: Request<proto::VerifyAuditRequest>,
    ) -> Reply<proto::VerifyAuditResponse> {
        relay!(self, "VerifyAudit", verify_audit, req)
    }

    async fn record_event(
        &self,
        req: Request<proto::RecordEventRequest>,
    ) -> Reply<proto::RecordEventResponse> {
        relay!(self, "RecordEvent", record_event, req)
    }

    async fn get_checkpoint(
        &self,
        req: Request<proto::GetCheckpointRequest>,
    ) -> Reply<proto::GetCheckpointResponse> {
        relay!(self, "GetCheckpoint", get_checkpoint, req)
    }

    async fn get_inclusion_proofs(
        &self,
        req: Request<proto::GetInclusionProofsRequest>,
    ) -> Reply<proto::GetInclusionProofsResponse> {
        relay!(self, "GetInclusionProofs", get_inclusion_proofs, req)
    }

    async fn get_consistency_proof(
        &self,
        req: Request<proto::GetConsistencyProofRequest>,
    ) -> Reply<proto::GetConsistencyProofResponse> {
        relay!(self, "GetConsistencyProof", get_consistency_proof, req)
    }

    async fn add_cosignature(
        &self,
        req: Request<proto::AddCosignatureRequest>,
    ) -> Reply<proto::AddCosignatureResponse> {
        relay!(self, "AddCosignature", add_cosignature, req)
    }

    async fn disable_user(
        &self,
        req: Request<proto::SetUserStatusRequest>,
    ) -> Reply<proto::SetUserStatusResponse> {
        relay!(self, "DisableUser", disable_user, req)
    }

    async fn enable_user(
        &self,
        req: Request<proto::SetUserStatusRequest>,
    ) -> Reply<proto::SetUserStatusResponse> {
        relay!(self, "EnableUser", enable_user, req)
    }

    async fn get_deny_list(
        &self,
        req: Request<proto::GetDenyListRequest>,
    ) -> Reply<proto::GetDenyListResponse> {
        relay!(self, "GetDenyList", get_deny_list, req)
    }

    async fn revoke_device(
        &self,
        req: Request<proto::RevokeDeviceRequest>,
    ) -> Reply<proto::RevokeDeviceResponse> {
        relay!(self, "RevokeDevice", revoke_device, req)
    }
}

// ---- silent listeners -------------------------------------------------------------------

/// A listener that accepts connections and then says nothing: the other
/// kind of bad server (stops, closing every socket, when dropped).
pub struct Silent {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`, for a mesh file.
    pub url: String,
    accepted: Arc<Mutex<u32>>,
    task: JoinHandle<()>,
}

impl Silent {
    /// Accepts TCP connections and never speaks TLS (nor reads).
    pub async fn tcp() -> Self {
        Self::start(None).await
    }

    /// Completes the TLS handshake presenting `tls` (ALPN `h2`), then
    /// neither reads nor writes.
    pub async fn after_tls(tls: &TlsMaterial) -> Self {
        sesphr_mesh::tls::install_crypto_provider();
        // `server_tls` bundles the service CA and then the user CA: the
        // handshake verifies whichever the client presents.
        let (service_ca, user_ca) = split_bundle(tls.ca_pem());
        let roots =
            sesphr_mesh::trust::TrustRoots::from_pem(&service_ca, &user_ca).expect("trust roots");
        let config = tls
            .rustls_server_config(false, &roots)
            .expect("server TLS config");
        Self::start(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    /// Connections accepted so far (past the handshake, for
    /// [`after_tls`](Self::after_tls)).
    pub fn accepted(&self) -> u32 {
        *self.accepted.lock().unwrap()
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                let count = count.clone();
                held.spawn(async move {
                    match tls {
                        None => {
                            *count.lock().unwrap() += 1;
                            // Holds the socket until the listener stops.
                            let _tcp = tcp;
                            futures::future::pending::<()>().await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                *count.lock().unwrap() += 1;
                                let _stream = stream;
                                futures::future::pending::<()>().await;
                            }
                        }
                    }
                });
            }
        });
        Silent {
            addr,
            url: format!("https://{addr}"),
            accepted,
            task,
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The two certificates of a [`server_tls`] CA bundle, as PEM.
fn split_bundle(bundle: &str) -> (String, String) {
    const END: &str = "-----END CERTIFICATE-----";
    let cut = bundle.find(END).expect("a PEM certificate") + END.len();
    (bundle[..cut].to_owned(), bundle[cut..].trim().to_owned())
}

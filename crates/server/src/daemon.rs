//! Running services: one at a time (`sesphrd serve`) or the whole mesh in one
//! process (`sesphrd dev`, tests, `sesphr demo`).
//!
//! Startup is phased: configuration is checked before any port is bound,
//! listeners are bound before anything is spawned (so a test can use
//! ephemeral ports and learn them), every service reports SERVING through
//! `grpc.health.v1` once it accepts calls, and shutdown drains in-flight calls
//! and then drops (and so flushes) the sled databases.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sesphr_identity::{Caller, Identity, NodeIndex, Service};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Status;
use zeroize::Zeroizing;

use crate::backends;
use crate::config::{ServeConfig, ServiceKind};
use crate::storage::StorageSettings;
use sesphr::proto::{self, service_names};
use sesphr::rpc;
use sesphr_access_policy::backend::PolicyBackend;
use sesphr_access_policy::grpc::{AccessPolicyService, LocalRefusalAudit, load_deny_list};
use sesphr_client::MeshFile;
use sesphr_cloud_storage::MAX_CHUNK_BYTES;
use sesphr_cloud_storage::grpc::CloudStorageService;
use sesphr_mesh::auth::{AuthorizeLayer, RefusalAudit};
use sesphr_mesh::deny::DenyList;
use sesphr_mesh::limits::{Limited, Limits};
use sesphr_mesh::pki::{CertificateAuthority, DevPki, PkiError};
use sesphr_mesh::policy_client::PolicyClient;
use sesphr_mesh::tls::{self, TlsError, TlsFiles, TlsMaterial};
use sesphr_mesh::transport::{self, Gate, TrackStreamsLayer, TransportLimits, WatchCap};
use sesphr_mesh::trust::TrustRoots;
use sesphr_mesh::unix_now;
use sesphr_srs::grpc::{NodeService, SetupDirectory, SetupService};

/// Default ports of `sesphrd dev`: CloudStorage, the SRS setup service,
/// AccessPolicy, then re-encryption nodes 1, 2, ….
pub const DEV_BASE_PORT: u16 = 50051;

/// What one running server is: one of the three services, or re-encryption
/// node `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Service(Service),
    SrsNode(NodeIndex),
}

impl Served {
    /// Its name in files, directories and logs: `cloud-storage`,
    /// `srs-node-2`, ….
    pub fn name(self) -> String {
        match self {
            Served::Service(s) => s.as_str().to_owned(),
            Served::SrsNode(i) => i.name(),
        }
    }

    /// The name it cosigns audit checkpoints under, if it is a witness
    /// (CloudStorage and the nodes may be).
    pub fn witness_name(self, trust_domain: &str) -> Option<String> {
        Caller::from_identity(&self.identity(trust_domain)).witness_name()
    }

    /// The identity its certificate names.
    pub fn identity(self, trust_domain: &str) -> Identity {
        match self {
            Served::Service(s) => Identity::service(trust_domain, s),
            Served::SrsNode(i) => Identity::srs_node(trust_domain, i),
        }
    }

    pub fn kind(self) -> ServiceKind {
        match self {
            Served::Service(s) => ServiceKind::Service(s),
            Served::SrsNode(_) => ServiceKind::SrsNode,
        }
    }

    /// The gRPC service name its health reports SERVING for.
    pub fn health_name(self) -> &'static str {
        match self {
            Served::Service(Service::CloudStorage) => service_names::CLOUD_STORAGE,
            Served::Service(Service::Srs) => service_names::SRS,
            Served::Service(Service::AccessPolicy) => service_names::ACCESS_POLICY,
            Served::SrsNode(_) => service_names::SRS_NODE,
        }
    }
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Service> for Served {
    fn from(s: Service) -> Self {
        Served::Service(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{service} database at {path}: {message}")]
    Store {
        service: Served,
        path: PathBuf,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} needs the access policy endpoint")]
    MissingPolicyEndpoint(Served),
    #[error("the SRS setup service needs the user CA (srs.issuer_cert, srs.issuer_key)")]
    MissingSrsSettings,
    #[error("AccessPolicy needs the setup service's endpoint (access_policy.setup_endpoint)")]
    MissingSetupEndpoint,
    #[error(
        "srs.issuer_cert is the service CA: the SRS must sign users with the user CA \
         (tls.user_ca), so that it can never mint service or operator identities"
    )]
    IssuerIsServiceCa,
    #[error(
        "srs.issuer_cert is not tls.user_ca: the certificates the SRS signs would chain to no \
         root the mesh's services trust for users"
    )]
    IssuerIsNotUserCa,
    #[error("a re-encryption node needs its setup endpoint and OPRF key share")]
    MissingNodeSettings,
    #[error("AccessPolicy needs its audit log signing key (access_policy.log_key_file)")]
    MissingAuditLogKey,
    #[error(
        "a re-encryption node's certificate must name spiffe://<td>/service/srs-node/<i>; this one names {0}"
    )]
    NotANodeCertificate(String),
    #[error("OPRF key share {path}: {message}")]
    OprfShare { path: PathBuf, message: String },
    #[error("audit log key {path}: {message}")]
    AuditKey { path: PathBuf, message: String },
    #[error("{service} server failed: {source}")]
    Transport {
        service: Served,
        source: tonic::transport::Error,
    },
    #[error("{0} server task panicked")]
    Panicked(Served),
    #[error("OPRF dealing: {0}")]
    Dealing(String),
    #[error(
        "{} holds a single-SRS mesh (kfrags and the OPRF key in srs/): split it first with \
         `sesphrd migrate-srs --data-dir {}` (docs/design.md, \"Setup and re-encryption nodes\")",
        .0.display(), .0.display()
    )]
    SingleSrsLayout(PathBuf),
}

/// Setup-service-only material.
pub struct SrsParams {
    /// The user CA (never the service CA).
    pub ca: CertificateAuthority,
    /// Patient self-registrations per minute; `None`: invitations only.
    pub self_registrations_per_minute: Option<u32>,
    /// How long user certificates last.
    pub user_cert_validity: time::Duration,
}

/// How a service follows AccessPolicy's deny list.
#[derive(Debug, Clone, Copy)]
pub struct DenyListParams {
    pub poll_interval: Duration,
    pub max_staleness: Duration,
}

impl From<crate::config::DenyListSettings> for DenyListParams {
    fn from(d: crate::config::DenyListSettings) -> Self {
        Self {
            poll_interval: Duration::from_millis(d.poll_interval_ms),
            max_staleness: Duration::from_millis(d.max_staleness_ms),
        }
    }
}

/// AccessPolicy's audit log signing key and checkpoint cadence.
pub struct AuditLogParams {
    pub key: sesphr_tlog::SigningKey,
    pub checkpoint_interval: Duration,
}

/// A witness's cosigning key, the log key it checks, its cadence.
pub struct WitnessParams {
    pub key: sesphr_tlog::SigningKey,
    pub log_key: sesphr_tlog::PublicKey,
    pub poll_interval: Duration,
}

fn audit_key_err(path: &Path) -> impl FnOnce(String) -> ServeError + '_ {
    move |message| ServeError::AuditKey {
        path: path.to_owned(),
        message,
    }
}

/// Reads a signing key file (64 hex digits).
pub fn read_signing_key(path: &Path) -> Result<sesphr_tlog::SigningKey, ServeError> {
    let text = Zeroizing::new(read_file(path)?);
    sesphr_tlog::SigningKey::from_hex(&text).map_err(|e| audit_key_err(path)(e.to_string()))
}

/// Reads a public key file (66 hex digits, SEC1 compressed).
pub fn read_public_key(path: &Path) -> Result<sesphr_tlog::PublicKey, ServeError> {
    let text = read_file(path)?;
    sesphr_tlog::PublicKey::from_hex(&text).map_err(|e| audit_key_err(path)(e.to_string()))
}

/// Re-encryption-node-only material.
pub struct NodeParams {
    /// This node's share of the dedup OPRF key.
    pub oprf_share: sesphr_dedup::KeyShare,
    /// `https://host:port` of the setup service.
    pub setup_endpoint: String,
    /// ReEncrypt calls per second per identity.
    pub reencrypt_rate: f64,
}

/// Reads a node's OPRF key share file (`sesphrd deal-oprf`).
pub fn read_oprf_share(path: &Path) -> Result<sesphr_dedup::KeyShare, ServeError> {
    let text = Zeroizing::new(read_file(path)?);
    sesphr_dedup::KeyShare::from_hex(&text).map_err(|e| ServeError::OprfShare {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Everything one service needs, with its listeners already bound.
pub struct ServiceParams {
    pub service: Served,
    pub trust_domain: String,
    pub listener: TcpListener,
    pub health_listener: Option<TcpListener>,
    pub tls: TlsMaterial,
    /// The service CA and the user CA, as the listener checks callers.
    pub roots: Arc<TrustRoots>,
    pub data_dir: PathBuf,
    pub access_policy_endpoint: Option<String>,
    /// AccessPolicy: the setup service (grants go to enrolled users).
    pub setup_endpoint: Option<String>,
    /// All but AccessPolicy: how the deny list is followed.
    pub deny_list: DenyListParams,
    pub peer_timeout: Duration,
    pub srs: Option<SrsParams>,
    pub node: Option<NodeParams>,
    /// AccessPolicy: signs the audit log's checkpoints.
    pub audit_log: Option<AuditLogParams>,
    /// CloudStorage or a node that witnesses the audit log.
    pub witness: Option<WitnessParams>,
    pub max_record_bytes: u64,
    /// Per-identity rate and concurrency limits.
    pub limits: Limits,
    /// CloudStorage: which uploads share a deduplicated blob.
    pub dedup_scope: sesphr_cloud_storage::DedupScope,
    /// Connection caps and timeouts of both listeners.
    pub transport: TransportLimits,
    /// Where the service keeps its state (sled in `data_dir` by default).
    pub storage: StorageSettings,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl ServiceParams {
    /// Loads TLS material and binds the listeners of a `sesphrd serve` config.
    pub async fn from_config(cfg: &ServeConfig) -> Result<Self, ServeError> {
        let tls = TlsMaterial::load(&cfg.tls)?;
        let roots = Arc::new(TrustRoots::load(&cfg.tls.ca, &cfg.user_ca)?);
        let srs = read_srs_params(cfg)?;
        let node = match &cfg.srs_node {
            Some(n) => Some(NodeParams {
                oprf_share: read_oprf_share(&n.oprf_share_file)?,
                setup_endpoint: n.setup_endpoint.clone(),
                reencrypt_rate: n.reencrypt_rate,
            }),
            None => None,
        };
        let audit_log = match &cfg.audit_log {
            Some(a) => Some(AuditLogParams {
                key: read_signing_key(&a.log_key_file)?,
                checkpoint_interval: Duration::from_millis(a.checkpoint_interval_ms),
            }),
            None => None,
        };
        let witness = match &cfg.witness {
            Some(w) => Some(WitnessParams {
                key: read_signing_key(&w.key_file)?,
                log_key: read_public_key(&w.log_public_key_file)?,
                poll_interval: Duration::from_millis(w.poll_interval_ms),
            }),
            None => None,
        };
        // A node is whichever node its certificate names.
        let service = match cfg.service {
            ServiceKind::Service(s) => Served::Service(s),
            ServiceKind::SrsNode => {
                let id = tls.identity()?;
                match id.as_srs_node() {
                    Some(i) => Served::SrsNode(i),
                    None => return Err(ServeError::NotANodeCertificate(id.to_string())),
                }
            }
        };
        let listener = bind(cfg.listen).await?;
        let health_listener = match cfg.health_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            service,
            trust_domain: cfg.trust_domain.clone(),
            listener,
            health_listener,
            tls,
            roots,
            data_dir: cfg.data_dir.clone(),
            access_policy_endpoint: cfg.access_policy_endpoint.clone(),
            setup_endpoint: cfg.setup_endpoint.clone(),
            deny_list: cfg.deny_list.into(),
            peer_timeout: Duration::from_millis(cfg.peer_timeout_ms),
            srs,
            node,
            audit_log,
            witness,
            max_record_bytes: cfg.max_record_bytes,
            limits: cfg.limits,
            dedup_scope: cfg.dedup_scope,
            storage: cfg.storage.clone(),
            transport: cfg.transport,
        })
    }
}

/// The setup service's user CA and enrolment settings of a config (`None`
/// for other services); refuses an issuer that is the service CA.
pub fn read_srs_params(cfg: &ServeConfig) -> Result<Option<SrsParams>, ServeError> {
    let Some(s) = &cfg.srs else {
        return Ok(None);
    };
    let cert = read_file(&s.issuer_cert)?;
    let key = Zeroizing::new(read_file(&s.issuer_key)?);
    if cert.trim() == read_file(&cfg.tls.ca)?.trim() {
        return Err(ServeError::IssuerIsServiceCa);
    }
    let user_ca = read_file(&cfg.user_ca)?;
    if cert.trim() != user_ca.trim() {
        return Err(ServeError::IssuerIsNotUserCa);
    }
    Ok(Some(SrsParams {
        ca: CertificateAuthority::from_pem(&cert, &key)?,
        self_registrations_per_minute: s.self_registrations_per_minute,
        user_cert_validity: time::Duration::days(i64::from(s.user_cert_validity_days)),
    }))
}

fn read_file(path: &Path) -> Result<String, ServeError> {
    std::fs::read_to_string(path).map_err(|source| ServeError::Io {
        path: path.to_owned(),
        source,
    })
}

fn store_err(service: Served, path: &Path) -> impl FnOnce(String) -> ServeError + '_ {
    move |message| ServeError::Store {
        service,
        path: path.to_owned(),
        message,
    }
}

/// Runs one service until `shutdown` resolves.
pub async fn run_service(
    p: ServiceParams,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let service = p.service;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("embedded descriptor sets are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");
    let td = p.trust_domain.clone();
    let require_client_cert = service != Served::Service(Service::Srs);
    let server_tls = p.tls.rustls_server_config(require_client_cert, &p.roots)?;
    // Connections are accepted, capped and handshaken by `transport`, which
    // also closes those that stay without a request.
    let gate = Gate::new(service.name(), p.transport);
    let policy = || -> Result<PolicyClient, ServeError> {
        let endpoint = p
            .access_policy_endpoint
            .as_deref()
            .ok_or(ServeError::MissingPolicyEndpoint(service))?;
        // Only AccessPolicy may answer there: a mesh certificate of another
        // identity is refused at the handshake.
        let policy_id = Identity::service(&p.trust_domain, Service::AccessPolicy);
        let channel = tls::channel(endpoint, p.tls.client_config(), &policy_id, p.peer_timeout)?;
        Ok(PolicyClient::new(channel, p.peer_timeout))
    };
    let store_dir = p.data_dir.clone();
    // AccessPolicy audits refusals into its own log; the others send them
    // there.
    let (policy_store, shared_policy_store) = match service {
        Served::Service(Service::AccessPolicy) => {
            let (storage, dir) = (p.storage.clone(), store_dir.clone());
            let (store, shared) = open_blocking(move || backends::policy(&storage, &dir))
                .await
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            (Some(store), shared)
        }
        _ => (None, false),
    };
    // One AccessPolicy client per process (CloudStorage, SRS): the service
    // and its refusal audit share it.
    let policy_client = match service {
        Served::Service(Service::AccessPolicy) => None,
        _ => Some(policy()?),
    };
    let policy = || {
        policy_client
            .clone()
            .ok_or(ServeError::MissingPolicyEndpoint(service))
    };
    let refusals: Arc<dyn RefusalAudit> = match (&policy_store, &policy_client) {
        (Some(store), _) => Arc::new(LocalRefusalAudit(store.clone())),
        (None, Some(client)) => Arc::new(client.clone()),
        (None, None) => return Err(ServeError::MissingPolicyEndpoint(service)),
    };
    // Who is disabled: AccessPolicy's own list, or a follower's copy of it.
    let deny = match &policy_store {
        Some(store) => {
            let store = store.clone();
            Arc::new(
                open_blocking(move || load_deny_list(&*store).map_err(backends::OpenError::from))
                    .await
                    .map_err(|e| store_err(service, &store_dir)(e.to_string()))?,
            )
        }
        None => Arc::new(DenyList::follower(p.deny_list.max_staleness)),
    };
    // Replicas sharing one database: a change made at another replica
    // reaches this one's list within SHARED_DENY_LIST_POLL.
    let shared_deny = match (&policy_store, shared_policy_store) {
        (Some(store), true) => {
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(follow_shared_deny_list(
                store.clone(),
                deny.clone(),
                stopped,
            ));
            Some((stop, task))
        }
        _ => None,
    };
    let follower = match &policy_client {
        None => None,
        Some(client) => {
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(sesphr_mesh::deny::follow(
                deny.clone(),
                client.grpc(),
                p.deny_list.poll_interval,
                p.peer_timeout.min(p.deny_list.poll_interval * 2),
                async move {
                    let _ = stopped.await;
                },
            ));
            // Serve users only with a list in hand, if AccessPolicy answers
            // soon (otherwise they are refused until it does).
            let loaded = tokio::time::Instant::now() + p.peer_timeout;
            while !deny.is_fresh() && tokio::time::Instant::now() < loaded {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some((stop, task))
        }
    };
    // Every request passes the stream tracking, then the one RPC table
    // (which hands handlers the typed caller), then the service's limits.
    let mut builder = p
        .transport
        .server()
        .layer(TrackStreamsLayer::new(gate.clone()))
        .layer(AuthorizeLayer::new(rpc::TABLE, refusals).with_deny_list(deny.clone()))
        .max_concurrent_streams(Some(p.limits.max_concurrent_streams));
    let router = builder
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut sweeper = None;
    let router = match service {
        Served::Service(Service::AccessPolicy) => {
            let store = policy_store.clone().expect("opened above for AccessPolicy");
            let endpoint = p
                .setup_endpoint
                .as_deref()
                .ok_or(ServeError::MissingSetupEndpoint)?;
            // Only the setup service may answer directory lookups.
            let setup_id = Identity::service(&td, Service::Srs);
            let channel = tls::channel(endpoint, p.tls.client_config(), &setup_id, p.peer_timeout)?;
            let directory = Arc::new(SetupDirectory::new(channel, p.peer_timeout));
            let svc = AccessPolicyService::new(store, directory, deny.clone());
            health.set_serving::<proto::access_policy_server::AccessPolicyServer<AccessPolicyService>>().await;
            router.add_service(Limited::new(
                proto::access_policy_server::AccessPolicyServer::new(svc),
                p.limits,
            ))
        }
        Served::Service(Service::CloudStorage) => {
            let limits = sesphr_cloud_storage::StoreLimits {
                max_record_size: p.max_record_bytes,
                dedup_scope: p.dedup_scope,
                ..Default::default()
            };
            let (storage, dir) = (p.storage.clone(), store_dir.clone());
            let records = open_blocking(move || backends::records(&storage, &dir, limits))
                .await
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            if let Some(remote) = records.remote.clone() {
                let (stop, stopped) = oneshot::channel::<()>();
                sweeper = Some((stop, tokio::spawn(sweep_stale_uploads(remote, stopped))));
            }
            // The service reads its page-token secret from the store.
            let (policy, td2) = (policy()?, td.clone());
            let svc = open_blocking(move || {
                CloudStorageService::new(records.store, policy, td2)
                    .map_err(backends::OpenError::from)
            })
            .await
            .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            health.set_serving::<proto::cloud_storage_server::CloudStorageServer<CloudStorageService>>().await;
            router.add_service(Limited::new(
                proto::cloud_storage_server::CloudStorageServer::new(svc)
                    .max_decoding_message_size(MAX_CHUNK_BYTES + (64 << 10))
                    .max_encoding_message_size(MAX_CHUNK_BYTES + (64 << 10)),
                p.limits,
            ))
        }
        Served::Service(Service::Srs) => {
            let srs = p.srs.ok_or(ServeError::MissingSrsSettings)?;
            let (storage, dir) = (p.storage.clone(), store_dir.clone());
            let store = open_blocking(move || backends::setup_store(&storage, &dir))
                .await
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            let config = sesphr_srs::setup::SetupConfig {
                trust_domain: td.clone(),
                service_ca_pem: p.tls.ca_pem().to_owned(),
                user_cert_validity: srs.user_cert_validity,
                self_registrations_per_minute: srs.self_registrations_per_minute,
                deny: Some(deny.clone()),
            };
            let svc = SetupService::new(store, Arc::new(srs.ca), policy()?, config);
            health
                .set_serving::<proto::srs_server::SrsServer<SetupService>>()
                .await;
            router.add_service(Limited::new(
                proto::srs_server::SrsServer::new(svc),
                p.limits,
            ))
        }
        Served::SrsNode(index) => {
            let node = p.node.ok_or(ServeError::MissingNodeSettings)?;
            let store = sesphr_srs::SrsStore::open(&store_dir)
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            // Only the setup service may answer directory lookups.
            let setup_id = Identity::service(&p.trust_domain, Service::Srs);
            let channel = tls::channel(
                &node.setup_endpoint,
                p.tls.client_config(),
                &setup_id,
                p.peer_timeout,
            )?;
            let directory = SetupDirectory::new(channel, p.peer_timeout);
            let config = sesphr_srs::node::NodeConfig {
                index,
                reencrypt_rate: node.reencrypt_rate,
                content_key_rate: sesphr_srs::node::DEFAULT_CONTENT_KEY_RATE,
            };
            let svc = NodeService::new(
                Arc::new(store),
                policy()?,
                directory,
                node.oprf_share,
                td.clone(),
                config,
            )
            .map_err(|e| ServeError::OprfShare {
                path: store_dir.clone(),
                message: e.to_string(),
            })?;
            health
                .set_serving::<proto::srs_node_server::SrsNodeServer<NodeService>>()
                .await;
            router.add_service(Limited::new(
                proto::srs_node_server::SrsNodeServer::new(svc),
                p.limits,
            ))
        }
    };
    let addr = p.listener.local_addr().ok();
    let incoming = transport::incoming_tls(p.listener, gate, server_tls, p.roots.clone(), &td);
    // A follower is ready (health SERVING) only while its deny list is
    // current: until the first answer, and whenever AccessPolicy has been
    // out of reach for longer than the staleness bound.
    let readiness = follower.as_ref().map(|_| {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (health, deny, name) = (health.clone(), deny.clone(), service.health_name());
        let task = tokio::spawn(async move {
            use tonic_health::ServingStatus;
            let mut serving = None;
            loop {
                let now = deny.is_fresh();
                if serving != Some(now) {
                    let status = if now {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    health.set_service_status(name, status).await;
                    serving = Some(now);
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        (stop, task)
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // The plaintext health port serves grpc.health.v1 only (for kubelet
    // probes, which cannot present client certificates), with the same
    // connection caps and timeouts and a bound on open Watch streams.
    let health_task = p.health_listener.map(|listener| {
        let mut rx = stop_rx.clone();
        let gate = Gate::new(format!("{service} health"), p.transport);
        let incoming = transport::incoming_plain(listener, gate.clone());
        let mut server = p.transport.server().layer(TrackStreamsLayer::new(gate));
        let health = WatchCap::new(health_service, p.transport.max_health_watches);
        tokio::spawn(async move {
            server
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    });
    let flusher = policy_store.clone().map(|store| {
        let (stop, stopped) = oneshot::channel::<()>();
        (stop, tokio::spawn(flush_coalesced(store, stopped)))
    });
    // AccessPolicy signs checkpoints; a witness cosigns them.
    let checkpointer = match (&policy_store, p.audit_log) {
        (Some(store), Some(log)) => {
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(crate::witness::publish_checkpoints(
                store.clone(),
                Arc::new(log.key),
                sesphr_tlog::audit_origin(&td),
                log.checkpoint_interval,
                stopped,
            ));
            Some((stop, task))
        }
        (Some(_), None) => return Err(ServeError::MissingAuditLogKey),
        _ => None,
    };
    let witness = match (p.witness, service.witness_name(&td)) {
        (Some(w), Some(name)) => {
            // The service's one connection to AccessPolicy.
            let client = policy_client
                .as_ref()
                .ok_or(ServeError::MissingPolicyEndpoint(service))?
                .grpc();
            let witness = crate::witness::Witness {
                name,
                key: w.key,
                log_key: w.log_key,
                origin: sesphr_tlog::audit_origin(&td),
                pin_path: crate::witness::pin_path(&store_dir),
                interval: w.poll_interval,
                timeout: p.peer_timeout,
            };
            let (stop, stopped) = oneshot::channel::<()>();
            Some((stop, tokio::spawn(witness.run(client, stopped))))
        }
        _ => None,
    };
    tracing::info!(%service, addr = ?addr, "serving");
    let result = router
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    if let Some(task) = health_task {
        let _ = task.await;
    }
    for (stop, task) in [
        flusher,
        checkpointer,
        witness,
        follower,
        readiness,
        shared_deny,
        sweeper,
    ]
    .into_iter()
    .flatten()
    {
        // Not aborted: a flush or signature in progress finishes before the
        // store closes.
        let _ = stop.send(());
        let _ = task.await;
    }
    if let Some(store) = policy_store {
        // Counts still pending are written before the store closes.
        let written =
            tokio::task::spawn_blocking(move || store.flush_all_coalesced(unix_now())).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "could not write coalesced audit entries at shutdown");
        }
    }
    tracing::info!(%service, "stopped");
    result.map_err(|source| ServeError::Transport { service, source })
}

/// Writes AccessPolicy's coalesced refusal entries as they fall due (see
/// `sesphr_access_policy::coalesce`), until `stop` fires.
async fn flush_coalesced(store: Arc<dyn PolicyBackend>, stop: oneshot::Receiver<()>) {
    let interval = sesphr_access_policy::coalesce::FLUSH_INTERVAL;
    let flush = move || store.flush_coalesced(unix_now());
    every(
        interval,
        stop,
        "write coalesced audit entries",
        flush,
        |n| {
            if n > 0 {
                tracing::debug!(entries = n, "coalesced audit entries written")
            }
        },
    )
    .await
}

/// Runs the blocking `job` every `interval` on the blocking pool until
/// `stop` fires, handing each result to `done`; a failure is logged (as
/// "could not {what}") and the next tick tries again.
async fn every<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
    what: &'static str,
    job: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    done: impl Fn(T),
) {
    let job = Arc::new(job);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let job = job.clone();
        match tokio::task::spawn_blocking(move || job()).await {
            Ok(Ok(t)) => done(t),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not {what}"),
            Err(e) => tracing::error!(error = %e, "background task failed: {what}"),
        }
    }
}

/// What one service of a dev mesh keeps its state in: the mesh's choice,
/// with S3 for CloudStorage only and sled for every node.
fn dev_storage(storage: &StorageSettings, service: Served) -> StorageSettings {
    match (storage, service) {
        (StorageSettings::Sled, _) | (_, Served::SrsNode(_)) => StorageSettings::Sled,
        (StorageSettings::Postgres { .. }, Served::Service(Service::CloudStorage)) => {
            storage.clone()
        }
        (StorageSettings::Postgres { pg, .. }, Served::Service(_)) => StorageSettings::Postgres {
            pg: pg.clone(),
            s3: None,
        },
    }
}

/// Runs a store's opening (or a first call into it) on the blocking pool:
/// a PostgreSQL backend blocks on its own queries, which must not happen
/// on an async worker.
async fn open_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, backends::OpenError> + Send + 'static,
) -> Result<T, backends::OpenError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(backends::OpenError(format!("store task failed: {e}"))))
}

/// How often an AccessPolicy replica re-reads a shared deny list.
pub const SHARED_DENY_LIST_POLL: Duration = Duration::from_secs(1);

/// Keeps an AccessPolicy replica's authoritative deny list equal to the
/// shared store's, which other replicas change too, until `stop` fires.
async fn follow_shared_deny_list(
    store: Arc<dyn PolicyBackend>,
    deny: Arc<DenyList>,
    stop: oneshot::Receiver<()>,
) {
    let read = move || store.deny_list();
    every(
        SHARED_DENY_LIST_POLL,
        stop,
        "re-read the shared deny list",
        read,
        |(v, e)| {
            // `reload` keeps a newer list a local change already put in.
            deny.reload(v, e)
        },
    )
    .await
}

/// How long an upload may stay without progress before a replica treats
/// it as left by a crashed one and aborts it. Progress is counted per
/// multipart part (at least 5 MiB), so a slow client's live upload must
/// not look dead: an hour covers one part at 1.5 kB/s.
pub const STALE_UPLOAD_SECS: i64 = 60 * 60;
/// How often CloudStorage looks for such uploads.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Aborts uploads that crashed replicas left in the shared store (their
/// multipart objects and pending rows), every [`SWEEP_INTERVAL`], until
/// `stop` fires.
async fn sweep_stale_uploads(
    store: Arc<sesphr_cloud_storage::remote::RemoteStore>,
    stop: oneshot::Receiver<()>,
) {
    let sweep = move || store.sweep_stale_uploads(STALE_UPLOAD_SECS, unix_now());
    every(SWEEP_INTERVAL, stop, "sweep stale uploads", sweep, |n| {
        if n > 0 {
            tracing::info!(uploads = n, "aborted uploads left by a stopped replica")
        }
    })
    .await
}

/// A running service task.
pub struct ServiceHandle {
    pub service: Served,
    pub addr: SocketAddr,
    task: JoinHandle<Result<(), ServeError>>,
}

impl ServiceHandle {
    /// Waits for the task to end (after shutdown was signalled).
    pub async fn join(self) -> Result<(), ServeError> {
        self.task
            .await
            .unwrap_or(Err(ServeError::Panicked(self.service)))
    }
}

/// Patient self-registrations per minute a dev mesh allows (mesh-wide):
/// enough for test suites, still a bound.
pub const DEV_SELF_REGISTRATIONS_PER_MINUTE: u32 = 6_000;

/// Options of an in-process mesh.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    /// CloudStorage listens here, the SRS setup service on +1, AccessPolicy
    /// on +2, re-encryption node `i` on +2+i; 0 picks free ports.
    pub base_port: u16,
    pub host: IpAddr,
    pub trust_domain: String,
    /// Re-encryption nodes, and how many a read needs. `None`: what the
    /// directory was first dealt, or 3 and 2 for a new one.
    pub srs_nodes: Option<u8>,
    pub threshold: Option<u8>,
    /// Per-identity limits of every service.
    pub limits: Limits,
    /// CloudStorage's dedup scope.
    pub dedup_scope: sesphr_cloud_storage::DedupScope,
    /// Connection caps and timeouts of every listener.
    pub transport: TransportLimits,
    /// How often AccessPolicy signs a checkpoint and witnesses cosign (ms).
    pub audit_interval_ms: u64,
    /// Sled (default), or PostgreSQL for CloudStorage, AccessPolicy and the
    /// setup service with CloudStorage's ciphertext in S3; the nodes always
    /// keep their own sled directories.
    pub storage: StorageSettings,
}

impl DevOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            base_port: DEV_BASE_PORT,
            host: IpAddr::from([127, 0, 0, 1]),
            trust_domain: sesphr_identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            srs_nodes: None,
            threshold: None,
            limits: Limits::default(),
            dedup_scope: Default::default(),
            transport: TransportLimits::default(),
            audit_interval_ms: crate::config::DEFAULT_AUDIT_INTERVAL_MS,
            storage: StorageSettings::Sled,
        }
    }

    /// Free ports chosen by the OS (tests).
    pub fn ephemeral(mut self) -> Self {
        self.base_port = 0;
        self
    }

    /// `nodes` re-encryption nodes, any `threshold` of which serve a read.
    pub fn nodes(mut self, nodes: u8, threshold: u8) -> Self {
        self.srs_nodes = Some(nodes);
        self.threshold = Some(threshold);
        self
    }
}

/// A dev mesh laid out on disk, its listeners bound: what `sesphrd dev`
/// starts, or (`--configure-only`) leaves for separate `sesphrd serve`
/// processes.
pub struct DevLayout {
    pub dir: PathBuf,
    pub mesh_file: PathBuf,
    pub mesh: MeshFile,
    pub pki: DevPki,
    /// `DIR/serve/<name>.toml`, one per service and node, in start order.
    pub serve_files: Vec<(Served, PathBuf)>,
    listeners: Vec<(Served, TcpListener, SocketAddr)>,
    dealing_dir: PathBuf,
}

/// Where `sesphrd dev` keeps the audit log's key pair (`log.key`,
/// `log.pub`): `DIR/pki/audit`.
pub fn dev_audit_dir(dir: &Path) -> PathBuf {
    dir.join("pki").join("audit")
}

/// Where `sesphrd dev` keeps each witness's key pair (`<name>.key`,
/// `<name>.pub`): `DIR/pki/witness`.
pub fn dev_witness_dir(dir: &Path) -> PathBuf {
    dir.join("pki").join("witness")
}

/// The key pair `<dir>/<name>.key` + `.pub`, made on first use; returns
/// the public key.
pub fn ensure_key_pair(dir: &Path, name: &str) -> Result<sesphr_tlog::PublicKey, ServeError> {
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    if key_path.exists() {
        let key = read_signing_key(&key_path)?;
        let public = key.public_key();
        if !pub_path.exists() {
            sesphr_mesh::pki::write_public(&pub_path, format!("{}\n", public.to_hex()).as_bytes())?;
        }
        return Ok(public);
    }
    std::fs::create_dir_all(dir).map_err(|source| ServeError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key = sesphr_tlog::SigningKey::generate(&mut rand::rng());
    let mut text = Zeroizing::new(key.to_hex().to_string());
    text.push('\n');
    sesphr_mesh::pki::write_secret(&key_path, text.as_bytes())?;
    let public = key.public_key();
    sesphr_mesh::pki::write_public(&pub_path, format!("{}\n", public.to_hex()).as_bytes())?;
    Ok(public)
}

/// The operator profile `sesphrd dev` writes: `DIR/operator`.
pub fn dev_operator_dir(dir: &Path) -> PathBuf {
    dir.join("operator")
}

/// Where `sesphrd dev` keeps the OPRF dealing: `DIR/pki/oprf`.
pub fn dev_dealing_dir(dir: &Path) -> PathBuf {
    dir.join("pki").join("oprf")
}

impl DevLayout {
    /// Creates (first start) or reuses `DIR/pki` (the CA, every identity,
    /// the OPRF dealing), binds every port, and writes `DIR/mesh.toml` and
    /// `DIR/serve/*.toml`.
    pub async fn prepare(opts: &DevOptions) -> Result<Self, ServeError> {
        tls::install_crypto_provider();
        // mesh.toml names files by absolute path, so clients may run from
        // any directory.
        let dir = std::path::absolute(&opts.data_dir).map_err(|source| ServeError::Io {
            path: opts.data_dir.clone(),
            source,
        })?;
        std::fs::create_dir_all(&dir).map_err(|source| ServeError::Io {
            path: dir.clone(),
            source,
        })?;
        refuse_single_srs_layout(&dir)?;
        let pki = DevPki::ensure(&dir.join("pki"), &opts.trust_domain)?;
        let dealing_dir = dev_dealing_dir(&dir);
        let dealing = crate::dealing::ensure(&dealing_dir, opts.threshold, opts.srs_nodes)
            .map_err(|e| ServeError::Dealing(e.to_string()))?;
        let mut order: Vec<Served> = vec![
            Service::CloudStorage.into(),
            Service::Srs.into(),
            Service::AccessPolicy.into(),
        ];
        for share in &dealing.srs_nodes {
            let index = NodeIndex::new(u32::from(share.index))
                .map_err(|e| ServeError::Dealing(e.to_string()))?;
            pki.ensure_node(&opts.trust_domain, index)?;
            order.push(Served::SrsNode(index));
        }
        let mut listeners = Vec::new();
        for (offset, served) in order.iter().enumerate() {
            let port = match opts.base_port {
                0 => 0,
                base => base.checked_add(offset as u16).ok_or(ServeError::Bind {
                    addr: SocketAddr::new(opts.host, base),
                    source: std::io::Error::other("ports run past 65535"),
                })?,
            };
            let l = bind(SocketAddr::new(opts.host, port)).await?;
            let addr = l.local_addr().map_err(|source| ServeError::Io {
                path: PathBuf::from(served.name()),
                source,
            })?;
            listeners.push((*served, l, addr));
        }
        let url = |addr: SocketAddr| format!("https://{addr}");
        let addr_of = |want: Served| {
            listeners
                .iter()
                .find(|(s, _, _)| *s == want)
                .map(|(_, _, a)| *a)
                .expect("every service was bound")
        };
        let srs_nodes = dealing
            .srs_nodes
            .iter()
            .zip(listeners.iter().skip(3))
            .map(|(share, (_, _, addr))| sesphr_client::NodeEntry {
                index: share.index,
                url: url(*addr),
                oprf_public_share: share.oprf_public_share.clone(),
            })
            .collect();
        // The audit log's key and one witness key per witness; a majority
        // of witnesses must cosign what a client accepts.
        let log_key = ensure_key_pair(&dev_audit_dir(&dir), "log")?;
        let mut witnesses = Vec::new();
        for served in &order {
            if let Some(name) = served.witness_name(&opts.trust_domain) {
                let key = ensure_key_pair(&dev_witness_dir(&dir), &name)?;
                witnesses.push(sesphr_client::WitnessEntry {
                    name,
                    key: key.to_hex(),
                });
            }
        }
        let audit = sesphr_client::AuditSection {
            origin: Some(sesphr_tlog::audit_origin(&opts.trust_domain)),
            log_key: log_key.to_hex(),
            witness_quorum: Some(sesphr_tlog::majority(witnesses.len())),
            witnesses,
        };
        let mesh = MeshFile {
            audit: Some(audit),
            trust_domain: opts.trust_domain.clone(),
            ca: pki.ca_cert(),
            cloud_storage: url(addr_of(Service::CloudStorage.into())),
            srs: url(addr_of(Service::Srs.into())),
            access_policy: url(addr_of(Service::AccessPolicy.into())),
            threshold: dealing.threshold,
            srs_nodes,
            timeouts: None,
        };
        let mesh_file = dir.join("mesh.toml");
        let text = toml::to_string(&mesh).expect("mesh file serializes");
        sesphr_mesh::pki::write_secret(&mesh_file, text.as_bytes())?;
        // A ready operator profile (`sesphr --home DIR/operator admin …`):
        // invitations, deactivation, the whole audit log.
        sesphr_client::admin::OperatorProfile::create(
            &dev_operator_dir(&dir),
            &read_file(&pki.cert("operator"))?,
            &read_file(&pki.key("operator"))?,
            &read_file(&pki.ca_cert())?,
        )
        .map_err(|e| ServeError::Io {
            path: dev_operator_dir(&dir),
            source: std::io::Error::other(e.to_string()),
        })?;
        let serve_dir = dir.join("serve");
        std::fs::create_dir_all(&serve_dir).map_err(|source| ServeError::Io {
            path: serve_dir.clone(),
            source,
        })?;
        let mut serve_files = Vec::new();
        for (served, _, addr) in &listeners {
            let file = serve_file(opts, &dir, &pki, &dealing_dir, &mesh, *served, *addr);
            let path = serve_dir.join(format!("{}.toml", served.name()));
            let text = format!(
                "# `sesphrd serve --config {}`, written by `sesphrd dev`.\n{}",
                path.display(),
                toml::to_string(&file).expect("a serve file serializes")
            );
            sesphr_mesh::pki::write_secret(&path, text.as_bytes())?;
            serve_files.push((*served, path));
        }
        Ok(DevLayout {
            dir,
            mesh_file,
            mesh,
            pki,
            serve_files,
            listeners,
            dealing_dir,
        })
    }
}

/// The `sesphrd serve` file of one dev service or node: the same ports,
/// directories and identities `sesphrd dev` uses itself.
fn serve_file(
    opts: &DevOptions,
    dir: &Path,
    pki: &DevPki,
    dealing_dir: &Path,
    mesh: &MeshFile,
    served: Served,
    addr: SocketAddr,
) -> crate::config::ServeFile {
    use crate::config::{ServeFile, SrsNodeSection, SrsSection, TlsSection};
    let name = served.name();
    let mut file = ServeFile {
        service: Some(served.kind().to_string()),
        trust_domain: Some(opts.trust_domain.clone()),
        listen: Some(addr.to_string()),
        data_dir: Some(dir.join(&name)),
        tls: TlsSection {
            cert: Some(pki.cert(&name)),
            key: Some(pki.key(&name)),
            ca: Some(pki.ca_cert()),
            user_ca: Some(pki.user_ca_cert()),
        },
        ..Default::default()
    };
    if served != Served::Service(Service::AccessPolicy) {
        file.access_policy_endpoint = Some(mesh.access_policy.clone());
    }
    match served {
        Served::Service(Service::Srs) => {
            // Dev meshes let patients register themselves; practitioners
            // still need an invitation (`sesphr admin invite`).
            file.srs = SrsSection {
                issuer_cert: Some(pki.user_ca_cert()),
                issuer_key: Some(pki.user_ca_key()),
                self_registration: Some(true),
                self_registrations_per_minute: Some(DEV_SELF_REGISTRATIONS_PER_MINUTE),
                ..Default::default()
            }
        }
        Served::SrsNode(index) => {
            file.srs_node = SrsNodeSection {
                setup_endpoint: Some(mesh.srs.clone()),
                oprf_share_file: Some(crate::dealing::share_path(dealing_dir, index)),
                reencrypt_rate: Some(crate::config::DEFAULT_REENCRYPT_RATE),
            }
        }
        Served::Service(Service::CloudStorage) => {
            let scope = match opts.dedup_scope {
                sesphr_cloud_storage::DedupScope::Global => "global",
                sesphr_cloud_storage::DedupScope::PerOwner => "per-owner",
            };
            file.cloud_storage.dedup_scope = Some(scope.to_owned());
        }
        Served::Service(Service::AccessPolicy) => {
            file.access_policy = crate::config::AccessPolicySection {
                log_key_file: Some(dev_audit_dir(dir).join("log.key")),
                checkpoint_interval_ms: Some(opts.audit_interval_ms),
                setup_endpoint: Some(mesh.srs.clone()),
            };
        }
    }
    if let Some(name) = served.witness_name(&opts.trust_domain) {
        file.witness = crate::config::WitnessSection {
            key_file: Some(dev_witness_dir(dir).join(format!("{name}.key"))),
            log_public_key_file: Some(dev_audit_dir(dir).join("log.pub")),
            poll_interval_ms: Some(opts.audit_interval_ms),
        };
    }
    file
}

/// A directory an earlier `sesphrd` ran a single SRS in (kfrags in
/// `DIR/srs`, no OPRF dealing) is not started as a split mesh: its grants
/// would be unreadable and its content keys would change.
fn refuse_single_srs_layout(dir: &Path) -> Result<(), ServeError> {
    let old = dir.join(Service::Srs.as_str());
    if !old.exists()
        || crate::dealing::load(&dev_dealing_dir(dir))
            .ok()
            .flatten()
            .is_some()
    {
        return Ok(());
    }
    Err(ServeError::SingleSrsLayout(dir.to_owned()))
}

/// The whole mesh in one process, each service and node on its own mTLS
/// port, talking to the others over real loopback mTLS connections.
pub struct DevMesh {
    pub mesh_file: PathBuf,
    pub mesh: MeshFile,
    pub pki: DevPki,
    /// `DIR/serve/<name>.toml` of every service and node.
    pub serve_files: Vec<(Served, PathBuf)>,
    handles: Vec<ServiceHandle>,
    stop: watch::Sender<bool>,
}

impl DevMesh {
    /// Lays the mesh out ([`DevLayout::prepare`]) and starts every service
    /// and node.
    pub async fn start(opts: DevOptions) -> Result<Self, ServeError> {
        let layout = DevLayout::prepare(&opts).await?;
        let DevLayout {
            dir,
            mesh_file,
            mesh,
            pki,
            serve_files,
            listeners,
            dealing_dir,
        } = layout;
        let roots = Arc::new(TrustRoots::load(&pki.ca_cert(), &pki.user_ca_cert())?);
        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for (service, listener, addr) in listeners {
            let name = service.name();
            let tls = TlsMaterial::load(&TlsFiles {
                cert: pki.cert(&name),
                key: pki.key(&name),
                ca: pki.ca_cert(),
            })?;
            let srs = if service == Served::Service(Service::Srs) {
                Some(SrsParams {
                    ca: pki.load_user_ca()?,
                    self_registrations_per_minute: Some(DEV_SELF_REGISTRATIONS_PER_MINUTE),
                    user_cert_validity: sesphr_mesh::pki::USER_CERT_VALIDITY,
                })
            } else {
                None
            };
            let node = match service {
                Served::SrsNode(index) => Some(NodeParams {
                    oprf_share: read_oprf_share(&crate::dealing::share_path(&dealing_dir, index))?,
                    setup_endpoint: mesh.srs.clone(),
                    reencrypt_rate: crate::config::DEFAULT_REENCRYPT_RATE,
                }),
                _ => None,
            };
            let interval = Duration::from_millis(opts.audit_interval_ms);
            let audit_log = match service {
                Served::Service(Service::AccessPolicy) => Some(AuditLogParams {
                    key: read_signing_key(&dev_audit_dir(&dir).join("log.key"))?,
                    checkpoint_interval: interval,
                }),
                _ => None,
            };
            let witness = match service.witness_name(&opts.trust_domain) {
                Some(name) => Some(WitnessParams {
                    key: read_signing_key(&dev_witness_dir(&dir).join(format!("{name}.key")))?,
                    log_key: read_public_key(&dev_audit_dir(&dir).join("log.pub"))?,
                    poll_interval: interval,
                }),
                None => None,
            };
            let params = ServiceParams {
                service,
                trust_domain: opts.trust_domain.clone(),
                listener,
                health_listener: None,
                tls,
                roots: roots.clone(),
                data_dir: dir.join(&name),
                access_policy_endpoint: Some(mesh.access_policy.clone()),
                setup_endpoint: Some(mesh.srs.clone()),
                deny_list: crate::config::DenyListSettings::default().into(),
                peer_timeout: Duration::from_millis(crate::config::DEFAULT_PEER_TIMEOUT_MS),
                srs,
                node,
                audit_log,
                witness,
                max_record_bytes: crate::config::DEFAULT_MAX_RECORD_BYTES,
                limits: opts.limits,
                dedup_scope: opts.dedup_scope,
                storage: dev_storage(&opts.storage, service),
                transport: opts.transport,
            };
            let mut rx = stop_rx.clone();
            let task = tokio::spawn(run_service(params, async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
            handles.push(ServiceHandle {
                service,
                addr,
                task,
            });
        }
        Ok(DevMesh {
            mesh_file,
            mesh,
            pki,
            serve_files,
            handles,
            stop,
        })
    }

    pub fn addr(&self, service: impl Into<Served>) -> SocketAddr {
        let service = service.into();
        self.handles
            .iter()
            .find(|h| h.service == service)
            .map(|h| h.addr)
            .expect("every service runs")
    }

    /// Every service and node that runs, in start order.
    pub fn served(&self) -> Vec<Served> {
        self.handles.iter().map(|h| h.service).collect()
    }

    /// TLS material of a service or `operator` identity of the dev PKI.
    pub fn identity_tls(&self, name: &str) -> Result<TlsMaterial, TlsError> {
        TlsMaterial::load(&TlsFiles {
            cert: self.pki.cert(name),
            key: self.pki.key(name),
            ca: self.pki.ca_cert(),
        })
    }

    /// Identity of the dev operator.
    pub fn operator_identity(&self) -> Identity {
        Identity::operator(&self.mesh.trust_domain, "operator").expect("valid id")
    }

    /// Waits until every service answers its health check over mTLS (with
    /// the operator identity), at most `patience`.
    pub async fn wait_ready(&self, patience: Duration) -> Result<(), Status> {
        let tls = self
            .identity_tls("operator")
            .map_err(|e| Status::internal(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + patience;
        for service in self.served() {
            let name = service.health_name();
            let url = format!("https://{}", self.addr(service));
            let expected = service.identity(&self.mesh.trust_domain);
            let channel =
                tls::channel(&url, tls.client_config(), &expected, Duration::from_secs(2))
                    .map_err(|e| Status::internal(e.to_string()))?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            loop {
                let req = tonic_health::pb::HealthCheckRequest {
                    service: name.to_owned(),
                };
                match client.check(req).await {
                    Ok(r) if r.get_ref().status == 1 => break,
                    other => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(Status::unavailable(format!(
                                "{service} not ready: {other:?}"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops every service, waits for in-flight calls to drain and the
    /// databases to close.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        let mut first_err = None;
        for h in self.handles {
            if let Err(e) = h.join().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

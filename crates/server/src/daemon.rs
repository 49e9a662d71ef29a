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

use sesphr_identity::{Identity, Service};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Status;
use zeroize::Zeroizing;

use crate::config::ServeConfig;
use sesphr::proto::{self, service_names};
use sesphr::rpc;
use sesphr_access_policy::grpc::{AccessPolicyService, LocalRefusalAudit};
use sesphr_client::MeshFile;
use sesphr_cloud_storage::MAX_CHUNK_BYTES;
use sesphr_cloud_storage::grpc::CloudStorageService;
use sesphr_mesh::auth::{AuthorizeLayer, RefusalAudit};
use sesphr_mesh::limits::{Limited, Limits};
use sesphr_mesh::pki::{CertificateAuthority, DevPki, PkiError};
use sesphr_mesh::policy_client::PolicyClient;
use sesphr_mesh::tls::{self, TlsError, TlsFiles, TlsMaterial};
use sesphr_mesh::transport::{self, Gate, TrackStreamsLayer, TransportLimits, WatchCap};
use sesphr_mesh::unix_now;
use sesphr_srs::grpc::SrsService;

/// Default ports of `sesphrd dev`: CloudStorage, SRS, AccessPolicy.
pub const DEV_BASE_PORT: u16 = 50051;

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
        service: Service,
        path: PathBuf,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} needs the access policy endpoint")]
    MissingPolicyEndpoint(Service),
    #[error("the SRS needs its CA and enrollment token")]
    MissingSrsSettings,
    #[error("{service} server failed: {source}")]
    Transport {
        service: Service,
        source: tonic::transport::Error,
    },
    #[error("{0} server task panicked")]
    Panicked(Service),
}

/// SRS-only material.
pub struct SrsParams {
    pub ca: CertificateAuthority,
    pub enrollment_token: Zeroizing<String>,
    pub reencrypt_rate: f64,
}

/// Everything one service needs, with its listeners already bound.
pub struct ServiceParams {
    pub service: Service,
    pub trust_domain: String,
    pub listener: TcpListener,
    pub health_listener: Option<TcpListener>,
    pub tls: TlsMaterial,
    pub data_dir: PathBuf,
    pub access_policy_endpoint: Option<String>,
    pub peer_timeout: Duration,
    pub srs: Option<SrsParams>,
    pub max_record_bytes: u64,
    /// Per-identity rate and concurrency limits.
    pub limits: Limits,
    /// CloudStorage: which uploads share a deduplicated blob.
    pub dedup_scope: sesphr_cloud_storage::DedupScope,
    /// Connection caps and timeouts of both listeners.
    pub transport: TransportLimits,
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
        let srs = match &cfg.srs {
            Some(s) => {
                let cert = read_file(&s.issuer_cert)?;
                let key = Zeroizing::new(read_file(&s.issuer_key)?);
                let token = Zeroizing::new(read_file(&s.enrollment_token_file)?.trim().to_owned());
                Some(SrsParams {
                    ca: CertificateAuthority::from_pem(&cert, &key)?,
                    enrollment_token: token,
                    reencrypt_rate: s.reencrypt_rate,
                })
            }
            None => None,
        };
        let listener = bind(cfg.listen).await?;
        let health_listener = match cfg.health_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            service: cfg.service,
            trust_domain: cfg.trust_domain.clone(),
            listener,
            health_listener,
            tls,
            data_dir: cfg.data_dir.clone(),
            access_policy_endpoint: cfg.access_policy_endpoint.clone(),
            peer_timeout: Duration::from_millis(cfg.peer_timeout_ms),
            srs,
            max_record_bytes: cfg.max_record_bytes,
            limits: cfg.limits,
            dedup_scope: cfg.dedup_scope,
            transport: cfg.transport,
        })
    }
}

fn read_file(path: &Path) -> Result<String, ServeError> {
    std::fs::read_to_string(path).map_err(|source| ServeError::Io {
        path: path.to_owned(),
        source,
    })
}

fn store_err(service: Service, path: &Path) -> impl FnOnce(String) -> ServeError + '_ {
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
    let require_client_cert = service != Service::Srs;
    let server_tls = p.tls.rustls_server_config(require_client_cert)?;
    // Connections are accepted, capped and handshaken by `transport`, which
    // also closes those that stay without a request.
    let gate = Gate::new(service.as_str(), p.transport);
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
    let policy_store = match service {
        Service::AccessPolicy => Some(Arc::new(
            sesphr_access_policy::PolicyStore::open(&store_dir)
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?,
        )),
        _ => None,
    };
    // One AccessPolicy client per process (CloudStorage, SRS): the service
    // and its refusal audit share it.
    let policy_client = match service {
        Service::AccessPolicy => None,
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
    // Every request passes the stream tracking, then the one RPC table
    // (which hands handlers the typed caller), then the service's limits.
    let mut builder = p
        .transport
        .server()
        .layer(TrackStreamsLayer::new(gate.clone()))
        .layer(AuthorizeLayer::new(rpc::TABLE, refusals))
        .max_concurrent_streams(Some(p.limits.max_concurrent_streams));
    let router = builder
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let router = match service {
        Service::AccessPolicy => {
            let store = policy_store.clone().expect("opened above for AccessPolicy");
            let svc = AccessPolicyService::new(store);
            health.set_serving::<proto::access_policy_server::AccessPolicyServer<AccessPolicyService>>().await;
            router.add_service(Limited::new(
                proto::access_policy_server::AccessPolicyServer::new(svc),
                p.limits,
            ))
        }
        Service::CloudStorage => {
            let limits = sesphr_cloud_storage::StoreLimits {
                max_record_size: p.max_record_bytes,
                dedup_scope: p.dedup_scope,
                ..Default::default()
            };
            let store = sesphr_cloud_storage::RecordStore::open(&store_dir, limits)
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            let svc = CloudStorageService::new(Arc::new(store), policy()?, td.clone())
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            health.set_serving::<proto::cloud_storage_server::CloudStorageServer<CloudStorageService>>().await;
            router.add_service(Limited::new(
                proto::cloud_storage_server::CloudStorageServer::new(svc)
                    .max_decoding_message_size(MAX_CHUNK_BYTES + (64 << 10))
                    .max_encoding_message_size(MAX_CHUNK_BYTES + (64 << 10)),
                p.limits,
            ))
        }
        Service::Srs => {
            let srs = p.srs.ok_or(ServeError::MissingSrsSettings)?;
            let store = sesphr_srs::SrsStore::open(&store_dir)
                .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            let svc = SrsService::new(
                Arc::new(store),
                Arc::new(srs.ca),
                srs.enrollment_token,
                policy()?,
                td.clone(),
                srs.reencrypt_rate,
            )
            .map_err(|e| store_err(service, &store_dir)(e.to_string()))?;
            health
                .set_serving::<proto::srs_server::SrsServer<SrsService>>()
                .await;
            router.add_service(Limited::new(
                proto::srs_server::SrsServer::new(svc),
                p.limits,
            ))
        }
    };
    let addr = p.listener.local_addr().ok();
    let incoming = transport::incoming_tls(p.listener, gate, server_tls, &td);
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
    if let Some((stop, task)) = flusher {
        // Not aborted: a flush in progress finishes before the store closes.
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
async fn flush_coalesced(
    store: Arc<sesphr_access_policy::PolicyStore>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(sesphr_access_policy::coalesce::FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.flush_coalesced(unix_now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(entries = n, "coalesced audit entries written"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not write coalesced audit entries"),
            Err(e) => tracing::error!(error = %e, "coalesced audit flush task failed"),
        }
    }
}

/// A running service task.
pub struct ServiceHandle {
    pub service: Service,
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

/// Options of an in-process mesh.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    /// CloudStorage listens here, the SRS on +1, AccessPolicy on +2; 0 picks
    /// free ports.
    pub base_port: u16,
    pub host: IpAddr,
    pub trust_domain: String,
    /// Per-identity limits of every service.
    pub limits: Limits,
    /// CloudStorage's dedup scope.
    pub dedup_scope: sesphr_cloud_storage::DedupScope,
    /// Connection caps and timeouts of every listener.
    pub transport: TransportLimits,
}

impl DevOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            base_port: DEV_BASE_PORT,
            host: IpAddr::from([127, 0, 0, 1]),
            trust_domain: sesphr_identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            limits: Limits::default(),
            dedup_scope: Default::default(),
            transport: TransportLimits::default(),
        }
    }

    /// Free ports chosen by the OS (tests).
    pub fn ephemeral(mut self) -> Self {
        self.base_port = 0;
        self
    }
}

/// The whole mesh in one process, each service on its own mTLS port, talking
/// to the others over real loopback mTLS connections.
pub struct DevMesh {
    pub mesh_file: PathBuf,
    pub mesh: MeshFile,
    pub pki: DevPki,
    handles: Vec<ServiceHandle>,
    stop: watch::Sender<bool>,
}

impl DevMesh {
    /// Creates (first start) or reuses `DIR/pki` and `DIR/mesh.toml`, binds
    /// the three ports and starts the services.
    pub async fn start(opts: DevOptions) -> Result<Self, ServeError> {
        tls::install_crypto_provider();
        // mesh.toml names files by absolute path, so clients may run from
        // any directory.
        let dir = &std::path::absolute(&opts.data_dir).map_err(|source| ServeError::Io {
            path: opts.data_dir.clone(),
            source,
        })?;
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Io {
            path: dir.clone(),
            source,
        })?;
        let pki = DevPki::ensure(&dir.join("pki"), &opts.trust_domain)?;
        let port = |offset: u16| {
            if opts.base_port == 0 {
                0
            } else {
                opts.base_port + offset
            }
        };
        let order = [Service::CloudStorage, Service::Srs, Service::AccessPolicy];
        let mut listeners = Vec::new();
        for (i, service) in order.iter().enumerate() {
            let l = bind(SocketAddr::new(opts.host, port(i as u16))).await?;
            let addr = l.local_addr().map_err(|source| ServeError::Io {
                path: PathBuf::from(service.as_str()),
                source,
            })?;
            listeners.push((*service, l, addr));
        }
        let url = |addr: SocketAddr| format!("https://{addr}");
        let policy_url = url(listeners[2].2);
        let token = Zeroizing::new(read_file(&pki.enrollment_token())?.trim().to_owned());
        let mesh = MeshFile {
            trust_domain: opts.trust_domain.clone(),
            ca: pki.ca_cert(),
            enrollment_token: Some(token.to_string()),
            cloud_storage: url(listeners[0].2),
            srs: url(listeners[1].2),
            access_policy: policy_url.clone(),
            timeouts: None,
        };
        let mesh_file = dir.join("mesh.toml");
        let text = toml::to_string(&mesh).expect("mesh file serializes");
        sesphr_mesh::pki::write_secret(&mesh_file, text.as_bytes())?;

        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for (service, listener, addr) in listeners {
            let name = service.as_str();
            let tls = TlsMaterial::load(&TlsFiles {
                cert: pki.cert(name),
                key: pki.key(name),
                ca: pki.ca_cert(),
            })?;
            let srs = if service == Service::Srs {
                Some(SrsParams {
                    ca: pki.load_ca()?,
                    enrollment_token: token.clone(),
                    reencrypt_rate: crate::config::DEFAULT_REENCRYPT_RATE,
                })
            } else {
                None
            };
            let params = ServiceParams {
                service,
                trust_domain: opts.trust_domain.clone(),
                listener,
                health_listener: None,
                tls,
                data_dir: dir.join(name),
                access_policy_endpoint: Some(policy_url.clone()),
                peer_timeout: Duration::from_millis(crate::config::DEFAULT_PEER_TIMEOUT_MS),
                srs,
                max_record_bytes: crate::config::DEFAULT_MAX_RECORD_BYTES,
                limits: opts.limits,
                dedup_scope: opts.dedup_scope,
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
            handles,
            stop,
        })
    }

    pub fn addr(&self, service: Service) -> SocketAddr {
        self.handles
            .iter()
            .find(|h| h.service == service)
            .map(|h| h.addr)
            .expect("every service runs")
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
        for (service, name) in [
            (Service::CloudStorage, service_names::CLOUD_STORAGE),
            (Service::Srs, service_names::SRS),
            (Service::AccessPolicy, service_names::ACCESS_POLICY),
        ] {
            let url = format!("https://{}", self.addr(service));
            let expected = Identity::service(&self.mesh.trust_domain, service);
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

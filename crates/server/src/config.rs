//! Configuration: the `sesphrd serve` TOML file with `SESPHR_*` environment
//! overrides, and the `mesh.toml` that `sesphrd dev` writes for clients.
//!
//! Every environment key is a documented constant below. Loading parses
//! everything, collects every problem and fails once, so an operator sees all
//! mistakes in one run (exit code 64, `EX_USAGE`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sesphr_identity::{DEFAULT_TRUST_DOMAIN, Service, validate_trust_domain};

use sesphr_mesh::limits::Limits;
use sesphr_mesh::tls::TlsFiles;
use sesphr_mesh::transport::TransportLimits;

/// Trust domain of the mesh (`spiffe://<this>/...`).
pub const ENV_TRUST_DOMAIN: &str = "SESPHR_TRUST_DOMAIN";
/// gRPC (mTLS) listen address, e.g. `0.0.0.0:50051`.
pub const ENV_LISTEN: &str = "SESPHR_LISTEN";
/// Optional plaintext listen address serving only `grpc.health.v1` (probes).
pub const ENV_HEALTH_LISTEN: &str = "SESPHR_HEALTH_LISTEN";
/// Directory of the service's sled database.
pub const ENV_DATA_DIR: &str = "SESPHR_DATA_DIR";
/// PEM certificate of this service (SPIFFE URI SAN `.../service/<name>`).
pub const ENV_TLS_CERT: &str = "SESPHR_TLS_CERT";
/// PEM private key of this service.
pub const ENV_TLS_KEY: &str = "SESPHR_TLS_KEY";
/// PEM certificate of the service CA (the root servers, nodes and
/// operators chain to; trusted for every server the process calls).
pub const ENV_TLS_CA: &str = "SESPHR_TLS_CA";
/// PEM certificate of the user CA (the root patients and practitioners
/// chain to; the SRS's issuer). Every service and node needs it.
pub const ENV_TLS_USER_CA: &str = "SESPHR_TLS_USER_CA";
/// `https://host:port` of AccessPolicy (CloudStorage and SRS need it).
pub const ENV_ACCESS_POLICY_ENDPOINT: &str = "SESPHR_ACCESS_POLICY_ENDPOINT";
/// Deadline of every call to a peer service, in milliseconds.
pub const ENV_PEER_TIMEOUT_MS: &str = "SESPHR_PEER_TIMEOUT_MS";
/// SRS: PEM certificate of the user CA, which signs user certificates.
pub const ENV_ISSUER_CERT: &str = "SESPHR_ISSUER_CERT";
/// SRS: PEM key of that CA.
pub const ENV_ISSUER_KEY: &str = "SESPHR_ISSUER_KEY";
/// SRS: `true` lets patients enrol without an invitation (rate-limited).
pub const ENV_SELF_REGISTRATION: &str = "SESPHR_SELF_REGISTRATION";
/// SRS: patient self-registrations per minute, mesh-wide (default 60).
pub const ENV_SELF_REGISTRATIONS_PER_MINUTE: &str = "SESPHR_SELF_REGISTRATIONS_PER_MINUTE";
/// SRS: days a user certificate lasts (default 30).
pub const ENV_USER_CERT_VALIDITY_DAYS: &str = "SESPHR_USER_CERT_VALIDITY_DAYS";
/// CloudStorage, SRS, nodes: how often the deny list is fetched from
/// AccessPolicy, ms (default 1000).
pub const ENV_DENY_LIST_POLL_INTERVAL_MS: &str = "SESPHR_DENY_LIST_POLL_INTERVAL_MS";
/// CloudStorage, SRS, nodes: how old the deny list may get before users are
/// refused, ms (default 5000).
pub const ENV_DENY_LIST_MAX_STALENESS_MS: &str = "SESPHR_DENY_LIST_MAX_STALENESS_MS";
/// CloudStorage: largest accepted record, in bytes.
pub const ENV_MAX_RECORD_BYTES: &str = "SESPHR_MAX_RECORD_BYTES";
/// CloudStorage: which uploads share a deduplicated blob: `global` (equal
/// files of all owners are stored once; the cloud learns that two owners
/// hold the same file) or `per-owner`.
pub const ENV_DEDUP_SCOPE: &str = "SESPHR_DEDUP_SCOPE";
/// Re-encryption node: requests per second per identity (burst = 4x).
pub const ENV_REENCRYPT_RATE: &str = "SESPHR_REENCRYPT_RATE";
/// Re-encryption node and AccessPolicy: `https://host:port` of the setup
/// service (the user directory: nodes check kfrag signatures against it,
/// AccessPolicy grants only to users enrolled there).
pub const ENV_SETUP_ENDPOINT: &str = "SESPHR_SETUP_ENDPOINT";
/// Re-encryption node: file holding this node's share of the dedup OPRF key
/// (written by `sesphrd deal-oprf`).
pub const ENV_OPRF_SHARE_FILE: &str = "SESPHR_OPRF_SHARE_FILE";
/// Expensive calls per second per identity, every service (`limits.rate_per_identity`).
pub const ENV_RATE_PER_IDENTITY: &str = "SESPHR_RATE_PER_IDENTITY";
/// Expensive calls an idle identity may start at once (`limits.burst_per_identity`).
pub const ENV_BURST_PER_IDENTITY: &str = "SESPHR_BURST_PER_IDENTITY";
/// Expensive calls one identity may have open at once (`limits.max_streams_per_identity`).
pub const ENV_MAX_STREAMS_PER_IDENTITY: &str = "SESPHR_MAX_STREAMS_PER_IDENTITY";
/// HTTP/2 streams per connection (`limits.max_concurrent_streams`).
pub const ENV_MAX_CONCURRENT_STREAMS: &str = "SESPHR_MAX_CONCURRENT_STREAMS";
/// Every listener: milliseconds a TLS handshake may take
/// (`transport.handshake_timeout_ms`, default 5000).
pub const ENV_HANDSHAKE_TIMEOUT_MS: &str = "SESPHR_HANDSHAKE_TIMEOUT_MS";
/// Every listener: milliseconds from the handshake (or accept, on the health
/// port) to the first request (`transport.preface_timeout_ms`, default 5000).
pub const ENV_PREFACE_TIMEOUT_MS: &str = "SESPHR_PREFACE_TIMEOUT_MS";
/// Every listener: milliseconds a connection may stay open without a stream
/// (`transport.idle_timeout_ms`, default 10000).
pub const ENV_IDLE_TIMEOUT_MS: &str = "SESPHR_IDLE_TIMEOUT_MS";
/// Every listener: HTTP/2 ping after this many milliseconds of silence
/// (`transport.keepalive_interval_ms`, default 10000).
pub const ENV_KEEPALIVE_INTERVAL_MS: &str = "SESPHR_KEEPALIVE_INTERVAL_MS";
/// Every listener: milliseconds a ping may wait for its answer before the
/// connection is dropped (`transport.keepalive_timeout_ms`, default 10000).
pub const ENV_KEEPALIVE_TIMEOUT_MS: &str = "SESPHR_KEEPALIVE_TIMEOUT_MS";
/// Every listener: connections from one IP address
/// (`transport.max_connections_per_peer`, default 64).
pub const ENV_MAX_CONNECTIONS_PER_PEER: &str = "SESPHR_MAX_CONNECTIONS_PER_PEER";
/// Every listener: connections in all (`transport.max_connections`, default 512).
pub const ENV_MAX_CONNECTIONS: &str = "SESPHR_MAX_CONNECTIONS";
/// Plaintext health port: open `Watch` streams
/// (`transport.max_health_watches`, default 16).
pub const ENV_MAX_HEALTH_WATCHES: &str = "SESPHR_MAX_HEALTH_WATCHES";

pub const DEFAULT_PEER_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 64 << 30;
pub const DEFAULT_REENCRYPT_RATE: f64 = 2_000.0;
pub const DEFAULT_SELF_REGISTRATIONS_PER_MINUTE: u32 = 60;
pub const DEFAULT_USER_CERT_VALIDITY_DAYS: u32 = 30;

/// Where configuration strings come from: the process environment in
/// production, a map in tests (no global state).
pub trait Strings {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl Strings for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// What a `sesphrd serve` process runs: one of the three services, or a
/// re-encryption node (whose index its certificate names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Service(Service),
    SrsNode,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Service(s) => s.as_str(),
            ServiceKind::SrsNode => "srs-node",
        }
    }
}

impl From<Service> for ServiceKind {
    fn from(s: Service) -> Self {
        ServiceKind::Service(s)
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "srs-node" => Ok(ServiceKind::SrsNode),
            other => other
                .parse()
                .map(ServiceKind::Service)
                .map_err(|e: sesphr_identity::IdentityError| e.to_string()),
        }
    }
}

/// AccessPolicy: the audit log's signing key file (64 hex digits).
pub const ENV_AUDIT_LOG_KEY_FILE: &str = "SESPHR_AUDIT_LOG_KEY_FILE";
/// AccessPolicy: how often a new checkpoint may be signed (ms).
pub const ENV_CHECKPOINT_INTERVAL_MS: &str = "SESPHR_CHECKPOINT_INTERVAL_MS";
/// Witnesses: this service's cosigning key file.
pub const ENV_WITNESS_KEY_FILE: &str = "SESPHR_WITNESS_KEY_FILE";
/// Witnesses: the audit log's public key file (66 hex digits).
pub const ENV_AUDIT_LOG_PUBLIC_KEY_FILE: &str = "SESPHR_AUDIT_LOG_PUBLIC_KEY_FILE";
/// Witnesses: how often to fetch and cosign the newest checkpoint (ms).
pub const ENV_WITNESS_POLL_INTERVAL_MS: &str = "SESPHR_WITNESS_POLL_INTERVAL_MS";

/// Default for `checkpoint_interval_ms` and `poll_interval_ms`.
pub const DEFAULT_AUDIT_INTERVAL_MS: u64 = 1000;

/// The `sesphrd serve` configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// What this file configures (`cloud-storage`, `srs`, `access-policy`,
    /// `srs-node`); `--service` may say it instead, and must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub trust_domain: Option<String>,
    pub listen: Option<String>,
    pub health_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsSection,
    pub access_policy_endpoint: Option<String>,
    pub peer_timeout_ms: Option<u64>,
    #[serde(default)]
    pub srs: SrsSection,
    #[serde(default)]
    pub srs_node: SrsNodeSection,
    #[serde(default)]
    pub cloud_storage: CloudStorageSection,
    #[serde(default)]
    pub access_policy: AccessPolicySection,
    #[serde(default)]
    pub witness: WitnessSection,
    #[serde(default)]
    pub deny_list: DenyListSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub transport: TransportSection,
    /// sled (default) or PostgreSQL + S3 (see [`crate::storage`]).
    #[serde(default)]
    pub storage: crate::storage::StorageSection,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The service CA.
    pub ca: Option<PathBuf>,
    /// The user CA's certificate.
    pub user_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SrsSection {
    pub issuer_cert: Option<PathBuf>,
    pub issuer_key: Option<PathBuf>,
    /// Gone (one token let anyone enrol as anything): refused with a
    /// message saying what replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token_file: Option<PathBuf>,
    pub self_registration: Option<bool>,
    pub self_registrations_per_minute: Option<u32>,
    pub user_cert_validity_days: Option<u32>,
    /// Moved to `[srs_node]`: refused here with a message saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reencrypt_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SrsNodeSection {
    pub setup_endpoint: Option<String>,
    pub oprf_share_file: Option<PathBuf>,
    pub reencrypt_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudStorageSection {
    pub max_record_bytes: Option<u64>,
    pub dedup_scope: Option<String>,
}

/// AccessPolicy's audit log: it signs checkpoints with this key.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicySection {
    pub log_key_file: Option<PathBuf>,
    pub checkpoint_interval_ms: Option<u64>,
    /// The setup service (the user directory grants are checked against).
    pub setup_endpoint: Option<String>,
}

/// How a service follows AccessPolicy's deny list (`sesphr_mesh::deny`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DenyListSection {
    pub poll_interval_ms: Option<u64>,
    pub max_staleness_ms: Option<u64>,
}

/// A witness of the audit log (CloudStorage or a node): checks each new
/// checkpoint against the last one it cosigned, then cosigns it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    pub key_file: Option<PathBuf>,
    pub log_public_key_file: Option<PathBuf>,
    pub poll_interval_ms: Option<u64>,
}

/// Sets `slot` from the environment variable `key`, if set.
fn num<T: std::str::FromStr>(
    env: &impl Strings,
    key: &str,
    slot: &mut Option<T>,
    errors: &mut Vec<String>,
) {
    if let Some(v) = env.get(key) {
        match v.parse() {
            Ok(n) => *slot = Some(n),
            Err(_) => errors.push(format!(
                "{key}={v:?} is not a valid {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("number")
            )),
        }
    }
}

/// Connection limits of every listener (see [`crate::transport`]); unset
/// keys keep the defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    pub handshake_timeout_ms: Option<u64>,
    pub preface_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub keepalive_interval_ms: Option<u64>,
    pub keepalive_timeout_ms: Option<u64>,
    pub max_connections_per_peer: Option<u32>,
    pub max_connections: Option<u32>,
    pub max_health_watches: Option<u32>,
}

impl TransportSection {
    /// Applies the `SESPHR_*` overrides, then fills in defaults.
    pub fn resolve(mut self, env: &impl Strings, errors: &mut Vec<String>) -> TransportLimits {
        num(
            env,
            ENV_HANDSHAKE_TIMEOUT_MS,
            &mut self.handshake_timeout_ms,
            errors,
        );
        num(
            env,
            ENV_PREFACE_TIMEOUT_MS,
            &mut self.preface_timeout_ms,
            errors,
        );
        num(env, ENV_IDLE_TIMEOUT_MS, &mut self.idle_timeout_ms, errors);
        num(
            env,
            ENV_KEEPALIVE_INTERVAL_MS,
            &mut self.keepalive_interval_ms,
            errors,
        );
        num(
            env,
            ENV_KEEPALIVE_TIMEOUT_MS,
            &mut self.keepalive_timeout_ms,
            errors,
        );
        num(
            env,
            ENV_MAX_CONNECTIONS_PER_PEER,
            &mut self.max_connections_per_peer,
            errors,
        );
        num(env, ENV_MAX_CONNECTIONS, &mut self.max_connections, errors);
        num(
            env,
            ENV_MAX_HEALTH_WATCHES,
            &mut self.max_health_watches,
            errors,
        );
        let d = TransportLimits::default();
        let ms = |v: Option<u64>, default| v.map_or(default, std::time::Duration::from_millis);
        let t = TransportLimits {
            handshake_timeout: ms(self.handshake_timeout_ms, d.handshake_timeout),
            preface_timeout: ms(self.preface_timeout_ms, d.preface_timeout),
            idle_timeout: ms(self.idle_timeout_ms, d.idle_timeout),
            keepalive_interval: ms(self.keepalive_interval_ms, d.keepalive_interval),
            keepalive_timeout: ms(self.keepalive_timeout_ms, d.keepalive_timeout),
            max_connections_per_peer: self
                .max_connections_per_peer
                .unwrap_or(d.max_connections_per_peer),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_health_watches: self.max_health_watches.unwrap_or(d.max_health_watches),
        };
        errors.extend(t.problems());
        t
    }
}

/// Per-identity limits (see [`crate::limits`]); unset keys keep the defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub rate_per_identity: Option<f64>,
    pub burst_per_identity: Option<u32>,
    pub max_streams_per_identity: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
}

impl LimitsSection {
    /// Applies the `SESPHR_*` overrides, then fills in defaults.
    pub fn resolve(mut self, env: &impl Strings, errors: &mut Vec<String>) -> Limits {
        num(
            env,
            ENV_RATE_PER_IDENTITY,
            &mut self.rate_per_identity,
            errors,
        );
        num(
            env,
            ENV_BURST_PER_IDENTITY,
            &mut self.burst_per_identity,
            errors,
        );
        num(
            env,
            ENV_MAX_STREAMS_PER_IDENTITY,
            &mut self.max_streams_per_identity,
            errors,
        );
        num(
            env,
            ENV_MAX_CONCURRENT_STREAMS,
            &mut self.max_concurrent_streams,
            errors,
        );
        let d = Limits::default();
        let limits = Limits {
            rate: self.rate_per_identity.unwrap_or(d.rate),
            burst: self.burst_per_identity.unwrap_or(d.burst),
            max_streams_per_identity: self
                .max_streams_per_identity
                .unwrap_or(d.max_streams_per_identity),
            max_concurrent_streams: self
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams),
        };
        errors.extend(limits.problems());
        limits
    }
}

/// A complete, validated configuration of one service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub service: ServiceKind,
    pub trust_domain: String,
    pub listen: SocketAddr,
    pub health_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    /// The user CA's certificate.
    pub user_ca: PathBuf,
    /// Required for CloudStorage and SRS.
    pub access_policy_endpoint: Option<String>,
    pub peer_timeout_ms: u64,
    pub srs: Option<SrsSettings>,
    pub srs_node: Option<SrsNodeSettings>,
    /// AccessPolicy only (required there).
    pub audit_log: Option<AuditLogSettings>,
    /// CloudStorage and nodes, when configured as witnesses.
    pub witness: Option<WitnessSettings>,
    /// AccessPolicy only (required there): the setup service.
    pub setup_endpoint: Option<String>,
    /// How the deny list is followed (all but AccessPolicy).
    pub deny_list: DenyListSettings,
    pub max_record_bytes: u64,
    pub limits: Limits,
    pub dedup_scope: sesphr_cloud_storage::DedupScope,
    /// Connection limits of every listener.
    pub transport: TransportLimits,
    /// Where the service keeps its state.
    pub storage: crate::storage::StorageSettings,
}

#[derive(Debug, Clone)]
pub struct SrsSettings {
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    /// Patient self-registrations per minute; `None`: invitations only.
    pub self_registrations_per_minute: Option<u32>,
    pub user_cert_validity_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyListSettings {
    pub poll_interval_ms: u64,
    pub max_staleness_ms: u64,
}

impl Default for DenyListSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: sesphr_mesh::deny::DEFAULT_POLL_INTERVAL.as_millis() as u64,
            max_staleness_ms: sesphr_mesh::deny::DEFAULT_MAX_STALENESS.as_millis() as u64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditLogSettings {
    pub log_key_file: PathBuf,
    pub checkpoint_interval_ms: u64,
}

#[derive(Debug, Clone)]
pub struct WitnessSettings {
    pub key_file: PathBuf,
    pub log_public_key_file: PathBuf,
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone)]
pub struct SrsNodeSettings {
    pub setup_endpoint: String,
    pub oprf_share_file: PathBuf,
    pub reencrypt_rate: f64,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

impl ServeConfig {
    /// Reads `path` (TOML), applies environment overrides, validates.
    /// Loads `path`; `service` is `--service`, if given (the file may name
    /// it instead; both must agree).
    pub fn load(
        path: &Path,
        service: Option<ServiceKind>,
        env: &impl Strings,
    ) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let file: ServeFile = toml::from_str(&text)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let named = match file.service.as_deref().map(str::parse::<ServiceKind>) {
            None => None,
            Some(Ok(kind)) => Some(kind),
            Some(Err(e)) => {
                return Err(ConfigErrors(vec![format!(
                    "{}: service: {e}",
                    path.display()
                )]));
            }
        };
        let service = match (service, named) {
            (Some(a), Some(b)) if a != b => {
                return Err(ConfigErrors(vec![format!(
                    "{}: the file configures {b}, not {a} (--service)",
                    path.display()
                )]));
            }
            (Some(kind), _) | (None, Some(kind)) => kind,
            (None, None) => {
                return Err(ConfigErrors(vec![format!(
                    "{}: say which service to run: --service, or service = \"...\" in the file",
                    path.display()
                )]));
            }
        };
        Self::from_file(file, service, env)
    }

    pub fn from_file(
        mut file: ServeFile,
        service: impl Into<ServiceKind>,
        env: &impl Strings,
    ) -> Result<Self, ConfigErrors> {
        let service = service.into();
        let mut errors = Vec::new();
        // Environment overrides the file.
        let over = |key: &str, slot: &mut Option<String>| {
            if let Some(v) = env.get(key) {
                *slot = Some(v);
            }
        };
        let over_path = |key: &str, slot: &mut Option<PathBuf>| {
            if let Some(v) = env.get(key) {
                *slot = Some(PathBuf::from(v));
            }
        };
        over(ENV_TRUST_DOMAIN, &mut file.trust_domain);
        over(ENV_LISTEN, &mut file.listen);
        over(ENV_HEALTH_LISTEN, &mut file.health_listen);
        over(ENV_ACCESS_POLICY_ENDPOINT, &mut file.access_policy_endpoint);
        over_path(ENV_DATA_DIR, &mut file.data_dir);
        over_path(ENV_TLS_CERT, &mut file.tls.cert);
        over_path(ENV_TLS_KEY, &mut file.tls.key);
        over_path(ENV_TLS_CA, &mut file.tls.ca);
        over_path(ENV_TLS_USER_CA, &mut file.tls.user_ca);
        over_path(ENV_ISSUER_CERT, &mut file.srs.issuer_cert);
        over_path(ENV_ISSUER_KEY, &mut file.srs.issuer_key);
        if service == ServiceKind::Service(Service::AccessPolicy) {
            over(ENV_SETUP_ENDPOINT, &mut file.access_policy.setup_endpoint);
        } else {
            over(ENV_SETUP_ENDPOINT, &mut file.srs_node.setup_endpoint);
        }
        if let Some(v) = env.get(ENV_SELF_REGISTRATION) {
            match v.parse::<bool>() {
                Ok(b) => file.srs.self_registration = Some(b),
                Err(_) => errors.push(format!(
                    "{ENV_SELF_REGISTRATION} {v:?} must be true or false"
                )),
            }
        }
        num(
            env,
            ENV_SELF_REGISTRATIONS_PER_MINUTE,
            &mut file.srs.self_registrations_per_minute,
            &mut errors,
        );
        num(
            env,
            ENV_USER_CERT_VALIDITY_DAYS,
            &mut file.srs.user_cert_validity_days,
            &mut errors,
        );
        num(
            env,
            ENV_DENY_LIST_POLL_INTERVAL_MS,
            &mut file.deny_list.poll_interval_ms,
            &mut errors,
        );
        num(
            env,
            ENV_DENY_LIST_MAX_STALENESS_MS,
            &mut file.deny_list.max_staleness_ms,
            &mut errors,
        );
        over_path(ENV_AUDIT_LOG_KEY_FILE, &mut file.access_policy.log_key_file);
        over_path(ENV_WITNESS_KEY_FILE, &mut file.witness.key_file);
        over_path(
            ENV_AUDIT_LOG_PUBLIC_KEY_FILE,
            &mut file.witness.log_public_key_file,
        );
        num(
            env,
            ENV_CHECKPOINT_INTERVAL_MS,
            &mut file.access_policy.checkpoint_interval_ms,
            &mut errors,
        );
        num(
            env,
            ENV_WITNESS_POLL_INTERVAL_MS,
            &mut file.witness.poll_interval_ms,
            &mut errors,
        );
        over_path(ENV_OPRF_SHARE_FILE, &mut file.srs_node.oprf_share_file);
        // Each value parses as its own type: `-1`, `1e9` or `1.5` for a
        // count of bytes or milliseconds is an error, never a default.
        num(
            env,
            ENV_PEER_TIMEOUT_MS,
            &mut file.peer_timeout_ms,
            &mut errors,
        );
        num(
            env,
            ENV_MAX_RECORD_BYTES,
            &mut file.cloud_storage.max_record_bytes,
            &mut errors,
        );
        if let Some(v) = env.get(ENV_DEDUP_SCOPE) {
            file.cloud_storage.dedup_scope = Some(v);
        }
        num(
            env,
            ENV_REENCRYPT_RATE,
            &mut file.srs_node.reencrypt_rate,
            &mut errors,
        );

        let trust_domain = file
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        if validate_trust_domain(&trust_domain).is_err() {
            errors.push(format!(
                "trust_domain {trust_domain:?} is not a valid DNS-like name"
            ));
        }
        let addr =
            |name: &str, v: Option<String>, errors: &mut Vec<String>| -> Option<SocketAddr> {
                let v = v?;
                match v.parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        errors.push(format!("{name} {v:?} is not an address like 0.0.0.0:50051"));
                        None
                    }
                }
            };
        let listen = addr("listen", file.listen.clone(), &mut errors);
        if file.listen.is_none() {
            errors.push(format!("listen is required (or set {ENV_LISTEN})"));
        }
        let health_listen = addr("health_listen", file.health_listen, &mut errors);
        if let (Some(l), Some(h)) = (listen, health_listen)
            && l.port() == h.port()
            && l.ip() == h.ip()
        {
            errors.push("health_listen must differ from listen".to_owned());
        }
        if file.data_dir.is_none() {
            errors.push(format!("data_dir is required (or set {ENV_DATA_DIR})"));
        }
        // All-or-nothing TLS: a half-configured mTLS setup is refused.
        fn require(errors: &mut Vec<String>, name: &str, env_key: &str, v: &Option<PathBuf>) {
            if v.is_none() {
                errors.push(format!("{name} is required (or set {env_key})"));
            }
        }
        require(&mut errors, "tls.cert", ENV_TLS_CERT, &file.tls.cert);
        require(&mut errors, "tls.key", ENV_TLS_KEY, &file.tls.key);
        require(&mut errors, "tls.ca", ENV_TLS_CA, &file.tls.ca);
        require(
            &mut errors,
            "tls.user_ca",
            ENV_TLS_USER_CA,
            &file.tls.user_ca,
        );
        let deny_list = {
            let d = DenyListSettings::default();
            let poll = file
                .deny_list
                .poll_interval_ms
                .unwrap_or(d.poll_interval_ms);
            let stale = file
                .deny_list
                .max_staleness_ms
                .unwrap_or(d.max_staleness_ms);
            if !(100..=60_000).contains(&poll) {
                errors.push(format!(
                    "deny_list.poll_interval_ms {poll} must be 100 to 60000"
                ));
            }
            // The mesh promises a disable holds everywhere within 10 s:
            // the bound plus one poll's timeout must stay under it.
            if stale < 2 * poll || stale > 8_000 {
                errors.push(format!(
                    "deny_list.max_staleness_ms {stale} must be at least twice poll_interval_ms \
                     ({poll}) and at most 8000 (a disable must hold everywhere within 10 s)"
                ));
            }
            DenyListSettings {
                poll_interval_ms: poll,
                max_staleness_ms: stale,
            }
        };
        let needs_policy = service != ServiceKind::Service(Service::AccessPolicy);
        match (&file.access_policy_endpoint, needs_policy) {
            (None, true) => errors.push(format!(
                "access_policy_endpoint is required for {service} (or set {ENV_ACCESS_POLICY_ENDPOINT})"
            )),
            (Some(e), true) if !e.starts_with("https://") => errors.push(format!(
                "access_policy_endpoint {e:?} must start with https://"
            )),
            _ => {}
        }
        if file.srs.enrollment_token_file.is_some() {
            errors.push(
                "srs.enrollment_token_file is gone: users enrol by invitation (`sesphr admin \
                 invite`), patients also by self-registration where srs.self_registration = true"
                    .to_owned(),
            );
        }
        if file.srs.reencrypt_rate.is_some() {
            errors.push(
                "srs.reencrypt_rate moved to [srs_node]: re-encryption nodes re-encrypt, the setup \
                 service does not"
                    .to_owned(),
            );
        }
        let srs = if service == ServiceKind::Service(Service::Srs) {
            require(
                &mut errors,
                "srs.issuer_cert",
                ENV_ISSUER_CERT,
                &file.srs.issuer_cert,
            );
            require(
                &mut errors,
                "srs.issuer_key",
                ENV_ISSUER_KEY,
                &file.srs.issuer_key,
            );
            if file.srs.self_registrations_per_minute == Some(0) {
                errors.push("srs.self_registrations_per_minute must be >= 1".to_owned());
            }
            match file.srs.user_cert_validity_days {
                Some(d) if !(1..=365).contains(&d) => {
                    errors.push(format!("srs.user_cert_validity_days {d} must be 1 to 365"))
                }
                _ => {}
            }
            Some(file.srs.clone())
        } else {
            None
        };
        let srs_node = if service == ServiceKind::SrsNode {
            match &file.srs_node.setup_endpoint {
                None => errors.push(format!(
                    "srs_node.setup_endpoint is required (or set {ENV_SETUP_ENDPOINT})"
                )),
                Some(e) if !e.starts_with("https://") => errors.push(format!(
                    "srs_node.setup_endpoint {e:?} must start with https://"
                )),
                Some(_) => {}
            }
            require(
                &mut errors,
                "srs_node.oprf_share_file",
                ENV_OPRF_SHARE_FILE,
                &file.srs_node.oprf_share_file,
            );
            let rate = file
                .srs_node
                .reencrypt_rate
                .unwrap_or(DEFAULT_REENCRYPT_RATE);
            if !(rate.is_finite() && rate > 0.0) {
                errors.push(format!("srs_node.reencrypt_rate {rate} must be > 0"));
            }
            Some((rate, file.srs_node.clone()))
        } else {
            None
        };
        let interval = |name: &str, v: Option<u64>, errors: &mut Vec<String>| {
            let ms = v.unwrap_or(DEFAULT_AUDIT_INTERVAL_MS);
            if !(10..=3_600_000).contains(&ms) {
                errors.push(format!("{name} {ms} must be 10 to 3600000 (ms)"));
            }
            ms
        };
        let audit_log = if service == ServiceKind::Service(Service::AccessPolicy) {
            require(
                &mut errors,
                "access_policy.log_key_file",
                ENV_AUDIT_LOG_KEY_FILE,
                &file.access_policy.log_key_file,
            );
            let ms = interval(
                "access_policy.checkpoint_interval_ms",
                file.access_policy.checkpoint_interval_ms,
                &mut errors,
            );
            match &file.access_policy.setup_endpoint {
                None => errors.push(format!(
                    "access_policy.setup_endpoint is required (or set {ENV_SETUP_ENDPOINT})"
                )),
                Some(e) if !e.starts_with("https://") => errors.push(format!(
                    "access_policy.setup_endpoint {e:?} must start with https://"
                )),
                Some(_) => {}
            }
            file.access_policy
                .log_key_file
                .clone()
                .map(|log_key_file| AuditLogSettings {
                    log_key_file,
                    checkpoint_interval_ms: ms,
                })
        } else {
            if file.access_policy.log_key_file.is_some()
                || file.access_policy.checkpoint_interval_ms.is_some()
                || file.access_policy.setup_endpoint.is_some()
            {
                errors.push(format!(
                    "[access_policy] configures AccessPolicy's audit log, not {service}"
                ));
            }
            None
        };
        let may_witness = matches!(
            service,
            ServiceKind::SrsNode | ServiceKind::Service(Service::CloudStorage)
        );
        let w = &file.witness;
        let witness = match (&w.key_file, &w.log_public_key_file) {
            (None, None) => {
                if w.poll_interval_ms.is_some() {
                    errors.push("witness.poll_interval_ms needs witness.key_file".to_owned());
                }
                None
            }
            _ if !may_witness => {
                errors.push(format!(
                    "[witness]: only CloudStorage and re-encryption nodes witness the audit log, not {service}"
                ));
                None
            }
            (Some(key_file), Some(log_public_key_file)) => Some(WitnessSettings {
                key_file: key_file.clone(),
                log_public_key_file: log_public_key_file.clone(),
                poll_interval_ms: interval(
                    "witness.poll_interval_ms",
                    w.poll_interval_ms,
                    &mut errors,
                ),
            }),
            (Some(_), None) => {
                errors.push(format!(
                    "witness.log_public_key_file is required with witness.key_file (or set {ENV_AUDIT_LOG_PUBLIC_KEY_FILE})"
                ));
                None
            }
            (None, Some(_)) => {
                errors.push(format!(
                    "witness.key_file is required with witness.log_public_key_file (or set {ENV_WITNESS_KEY_FILE})"
                ));
                None
            }
        };
        let limits = file.limits.clone().resolve(env, &mut errors);
        let transport = file.transport.clone().resolve(env, &mut errors);
        let storage = file.storage.clone().resolve(service, env, &mut errors);
        let dedup_scope = match file.cloud_storage.dedup_scope.as_deref() {
            None => Default::default(),
            Some(s) => s.parse().unwrap_or_else(|e: String| {
                errors.push(format!("cloud_storage.dedup_scope: {e}"));
                Default::default()
            }),
        };
        let peer_timeout_ms = file.peer_timeout_ms.unwrap_or(DEFAULT_PEER_TIMEOUT_MS);
        if peer_timeout_ms == 0 {
            errors.push("peer_timeout_ms must be > 0".to_owned());
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let (Some(listen), Some(data_dir), Some(cert), Some(key), Some(ca), Some(user_ca)) = (
            listen,
            file.data_dir,
            file.tls.cert,
            file.tls.key,
            file.tls.ca,
            file.tls.user_ca,
        ) else {
            unreachable!("missing values were reported above");
        };
        let srs = srs.map(|s| SrsSettings {
            issuer_cert: s.issuer_cert.unwrap_or_default(),
            issuer_key: s.issuer_key.unwrap_or_default(),
            self_registrations_per_minute: s.self_registration.unwrap_or(false).then(|| {
                s.self_registrations_per_minute
                    .unwrap_or(DEFAULT_SELF_REGISTRATIONS_PER_MINUTE)
            }),
            user_cert_validity_days: s
                .user_cert_validity_days
                .unwrap_or(DEFAULT_USER_CERT_VALIDITY_DAYS),
        });
        let srs_node = srs_node.map(|(rate, n)| SrsNodeSettings {
            setup_endpoint: n.setup_endpoint.unwrap_or_default(),
            oprf_share_file: n.oprf_share_file.unwrap_or_default(),
            reencrypt_rate: rate,
        });
        Ok(ServeConfig {
            service,
            trust_domain,
            listen,
            health_listen,
            data_dir,
            tls: TlsFiles { cert, key, ca },
            user_ca,
            access_policy_endpoint: file.access_policy_endpoint,
            peer_timeout_ms,
            srs,
            srs_node,
            audit_log,
            witness,
            setup_endpoint: file.access_policy.setup_endpoint,
            deny_list,
            max_record_bytes: file
                .cloud_storage
                .max_record_bytes
                .unwrap_or(DEFAULT_MAX_RECORD_BYTES),
            limits,
            dedup_scope,
            transport,
            storage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FULL: &str = r#"
        listen = "0.0.0.0:50051"
        health_listen = "0.0.0.0:8080"
        data_dir = "/var/lib/sesphr"
        access_policy_endpoint = "https://access-policy:50053"
        [tls]
        cert = "/tls/tls.crt"
        key = "/tls/tls.key"
        ca = "/tls/ca.crt"
        user_ca = "/tls/user-ca.crt"
    "#;

    #[test]
    fn full_file_parses() {
        let file: ServeFile = toml::from_str(FULL).unwrap();
        let cfg = ServeConfig::from_file(file, Service::CloudStorage, &env(&[])).unwrap();
        assert_eq!(cfg.listen.port(), 50051);
        assert_eq!(cfg.health_listen.unwrap().port(), 8080);
        assert_eq!(cfg.trust_domain, DEFAULT_TRUST_DOMAIN);
    }

    #[test]
    fn audit_log_and_witness_settings_go_where_they_belong() {
        let parse = |extra: &str, service: ServiceKind, pairs: &[(&str, &str)]| {
            let file: ServeFile = toml::from_str(&format!("{FULL}\n{extra}")).unwrap();
            ServeConfig::from_file(file, service, &env(pairs))
        };
        let ap = ServiceKind::Service(Service::AccessPolicy);
        let cs = ServiceKind::Service(Service::CloudStorage);
        let errs = parse("", ap, &[]).unwrap_err().0.join("\n");
        assert!(
            errs.contains("access_policy.log_key_file is required"),
            "{errs}"
        );
        let errs = parse("[access_policy]\nlog_key_file = \"/k\"", ap, &[])
            .unwrap_err()
            .0
            .join("\n");
        assert!(
            errs.contains("access_policy.setup_endpoint is required"),
            "{errs}"
        );
        let cfg = parse(
            "[access_policy]\nlog_key_file = \"/k\"",
            ap,
            &[(ENV_SETUP_ENDPOINT, "https://srs:50052")],
        )
        .unwrap();
        assert_eq!(cfg.setup_endpoint.as_deref(), Some("https://srs:50052"));
        assert_eq!(cfg.audit_log.unwrap().checkpoint_interval_ms, 1000);
        let errs = parse("[access_policy]\nlog_key_file = \"/k\"", cs, &[])
            .unwrap_err()
            .0
            .join("\n");
        assert!(errs.contains("not cloud-storage"), "{errs}");
        let w = "[witness]\nkey_file = \"/w\"\nlog_public_key_file = \"/p\"";
        let cfg = parse(w, cs, &[(ENV_WITNESS_POLL_INTERVAL_MS, "250")]).unwrap();
        let witness = cfg.witness.unwrap();
        assert_eq!(witness.poll_interval_ms, 250);
        assert_eq!(witness.key_file, PathBuf::from("/w"));
        assert!(cfg.audit_log.is_none());
        let errs = parse(w, ServiceKind::Service(Service::Srs), &[])
            .unwrap_err()
            .0
            .join("\n");
        assert!(
            errs.contains("only CloudStorage and re-encryption nodes"),
            "{errs}"
        );
        let half = "[witness]\nkey_file = \"/w\"";
        let errs = parse(half, cs, &[]).unwrap_err().0.join("\n");
        assert!(
            errs.contains("witness.log_public_key_file is required"),
            "{errs}"
        );
        let errs = parse(w, cs, &[(ENV_WITNESS_POLL_INTERVAL_MS, "0")])
            .unwrap_err()
            .0
            .join("\n");
        assert!(errs.contains("must be 10 to 3600000"), "{errs}");
    }

    #[test]
    fn env_overrides_file() {
        let file: ServeFile = toml::from_str(FULL).unwrap();
        let e = env(&[
            (ENV_LISTEN, "127.0.0.1:7000"),
            (ENV_TRUST_DOMAIN, "example.org"),
            (ENV_AUDIT_LOG_KEY_FILE, "/keys/log.key"),
            (ENV_SETUP_ENDPOINT, "https://srs:50052"),
        ]);
        let cfg = ServeConfig::from_file(file, Service::AccessPolicy, &e).unwrap();
        assert_eq!(
            cfg.audit_log.unwrap().log_key_file,
            PathBuf::from("/keys/log.key")
        );
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.trust_domain, "example.org");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file: ServeFile = toml::from_str("listen = \"nope\"\n[tls]\ncert = \"c\"").unwrap();
        let e = env(&[(ENV_PEER_TIMEOUT_MS, "soon")]);
        let errs = ServeConfig::from_file(file, Service::Srs, &e)
            .unwrap_err()
            .0;
        let all = errs.join("\n");
        for needle in [
            "listen \"nope\"",
            "data_dir is required",
            "tls.key is required",
            "tls.ca is required",
            "access_policy_endpoint is required",
            "srs.issuer_cert is required",
            "SESPHR_PEER_TIMEOUT_MS",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    /// Values that parse as a float but not as the whole number a key
    /// takes once fell back to the default in silence.
    #[test]
    fn numbers_that_are_not_whole_are_errors_not_defaults() {
        for key in [
            ENV_PEER_TIMEOUT_MS,
            ENV_MAX_RECORD_BYTES,
            ENV_IDLE_TIMEOUT_MS,
        ] {
            for bad in ["-1", "1e9", "1.5", " 5", ""] {
                let file: ServeFile = toml::from_str(FULL).unwrap();
                let e = env(&[(key, bad)]);
                let all = ServeConfig::from_file(file, Service::CloudStorage, &e)
                    .err()
                    .unwrap_or_else(|| panic!("{key}={bad:?} was accepted"))
                    .0
                    .join("\n");
                assert!(
                    all.contains(&format!("{key}={bad:?} is not a valid u64")),
                    "{all}"
                );
            }
        }
        let file: ServeFile = toml::from_str(FULL).unwrap();
        let e = env(&[(ENV_PEER_TIMEOUT_MS, "1500"), (ENV_REENCRYPT_RATE, "1.5")]);
        let cfg = ServeConfig::from_file(file, Service::CloudStorage, &e).unwrap();
        assert_eq!(cfg.peer_timeout_ms, 1500);
    }

    #[test]
    fn limits_from_file_and_env() {
        let text =
            format!("{FULL}\n[limits]\nrate_per_identity = 5.5\nmax_streams_per_identity = 3\n");
        let file: ServeFile = toml::from_str(&text).unwrap();
        let e = env(&[(ENV_MAX_CONCURRENT_STREAMS, "32")]);
        let cfg = ServeConfig::from_file(file, Service::CloudStorage, &e).unwrap();
        assert_eq!(cfg.limits.rate, 5.5);
        assert_eq!(cfg.limits.max_streams_per_identity, 3);
        assert_eq!(cfg.limits.max_concurrent_streams, 32);
        assert_eq!(cfg.limits.burst, sesphr_mesh::limits::DEFAULT_BURST);

        let file: ServeFile = toml::from_str(FULL).unwrap();
        let e = env(&[
            (ENV_RATE_PER_IDENTITY, "0"),
            (ENV_BURST_PER_IDENTITY, "many"),
        ]);
        let all = ServeConfig::from_file(file, Service::CloudStorage, &e)
            .unwrap_err()
            .0
            .join("\n");
        assert!(all.contains("rate_per_identity 0 must be > 0"), "{all}");
        assert!(all.contains("SESPHR_BURST_PER_IDENTITY"), "{all}");
    }

    #[test]
    fn transport_limits_from_file_and_env() {
        let text = format!("{FULL}\n[transport]\nidle_timeout_ms = 2500\nmax_connections = 9\n");
        let e = env(&[
            (ENV_MAX_CONNECTIONS_PER_PEER, "3"),
            (ENV_HANDSHAKE_TIMEOUT_MS, "750"),
            (ENV_AUDIT_LOG_KEY_FILE, "/keys/log.key"),
            (ENV_SETUP_ENDPOINT, "https://srs:50052"),
        ]);
        let file: ServeFile = toml::from_str(&text).unwrap();
        let t = ServeConfig::from_file(file, Service::AccessPolicy, &e)
            .unwrap()
            .transport;
        assert_eq!(t.idle_timeout, std::time::Duration::from_millis(2500));
        assert_eq!(t.handshake_timeout, std::time::Duration::from_millis(750));
        assert_eq!((t.max_connections, t.max_connections_per_peer), (9, 3));
        assert_eq!(
            t.preface_timeout,
            sesphr_mesh::transport::DEFAULT_PREFACE_TIMEOUT
        );

        let file: ServeFile = toml::from_str(FULL).unwrap();
        let e = env(&[(ENV_IDLE_TIMEOUT_MS, "0"), (ENV_MAX_HEALTH_WATCHES, "lots")]);
        let all = ServeConfig::from_file(file, Service::AccessPolicy, &e)
            .unwrap_err()
            .0
            .join("\n");
        assert!(
            all.contains("transport.idle_timeout_ms must be > 0"),
            "{all}"
        );
        assert!(all.contains("SESPHR_MAX_HEALTH_WATCHES"), "{all}");
    }

    #[test]
    fn a_node_needs_its_setup_endpoint_and_share_and_the_setup_service_no_rate() {
        let file: ServeFile = toml::from_str(FULL).unwrap();
        let all = ServeConfig::from_file(file, ServiceKind::SrsNode, &env(&[]))
            .unwrap_err()
            .0
            .join("\n");
        assert!(all.contains("srs_node.setup_endpoint is required"), "{all}");
        assert!(
            all.contains("srs_node.oprf_share_file is required"),
            "{all}"
        );
        let file: ServeFile = toml::from_str(FULL).unwrap();
        let e = env(&[
            (ENV_SETUP_ENDPOINT, "http://srs:50052"),
            (ENV_OPRF_SHARE_FILE, "/oprf/share"),
            (ENV_REENCRYPT_RATE, "fast"),
        ]);
        let all = ServeConfig::from_file(file, ServiceKind::SrsNode, &e)
            .unwrap_err()
            .0
            .join("\n");
        assert!(all.contains("must start with https://"), "{all}");
        assert!(all.contains("SESPHR_REENCRYPT_RATE"), "{all}");
        let file: ServeFile = toml::from_str(FULL).unwrap();
        let e = env(&[
            (ENV_SETUP_ENDPOINT, "https://srs:50052"),
            (ENV_OPRF_SHARE_FILE, "/oprf/share"),
        ]);
        let node = ServeConfig::from_file(file, ServiceKind::SrsNode, &e)
            .unwrap()
            .srs_node
            .unwrap();
        assert_eq!(node.reencrypt_rate, DEFAULT_REENCRYPT_RATE);
        let text = format!("{FULL}\n[srs]\nreencrypt_rate = 5.0\n");
        let file: ServeFile = toml::from_str(&text).unwrap();
        let all = ServeConfig::from_file(file, Service::Srs, &env(&[]))
            .unwrap_err()
            .0
            .join("\n");
        assert!(
            all.contains("srs.reencrypt_rate moved to [srs_node]"),
            "{all}"
        );
    }

    #[test]
    fn the_file_or_the_flag_names_the_service_and_they_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "service = \"access-policy\"\n{FULL}\n[access_policy]\nlog_key_file = \"/k\"\nsetup_endpoint = \"https://srs:50052\"\n"
            ),
        )
        .unwrap();
        let cfg = ServeConfig::load(&path, None, &env(&[])).unwrap();
        assert_eq!(cfg.service, ServiceKind::Service(Service::AccessPolicy));
        let e = ServeConfig::load(&path, Some(Service::Srs.into()), &env(&[]))
            .unwrap_err()
            .0
            .join("\n");
        assert!(e.contains("configures access-policy, not srs"), "{e}");
        std::fs::write(&path, FULL).unwrap();
        let e = ServeConfig::load(&path, None, &env(&[]))
            .unwrap_err()
            .0
            .join("\n");
        assert!(e.contains("say which service to run"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ServeFile>("lisen = \"0.0.0.0:1\"").is_err());
    }
}

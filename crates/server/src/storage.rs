//! Where a service keeps its state: the `[storage]` section of `sesphrd
//! serve`'s file and its `SESPHR_*` overrides.
//!
//! `sled` (the default) is one embedded database in `data_dir`, the zero-set-up
//! choice for `sesphrd dev` and single-node deployments. `postgres` keeps
//! the service's metadata in PostgreSQL and, for CloudStorage, ciphertext in
//! an S3 API bucket; then any number of processes of the service serve the
//! same data (stateless replicas).
//!
//! Re-encryption nodes stay on sled: each node's key-fragment shares must
//! live apart from every other node's, and one database shared by all nodes
//! would hold every share (docs/design.md, "Setup and re-encryption nodes").

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sesphr_domain::pg::PgConfig;
use sesphr_identity::Service;
use zeroize::Zeroizing;

use crate::config::{ServiceKind, Strings};

/// `sled` or `postgres`.
pub const ENV_STORAGE_BACKEND: &str = "SESPHR_STORAGE_BACKEND";
/// PostgreSQL URL (`postgres://user:password@host:port/db?sslmode=verify-full`).
/// Prefer `SESPHR_POSTGRES_URL_FILE`: a URL with a password in the
/// environment is visible to whoever reads the process's environment.
pub const ENV_POSTGRES_URL: &str = "SESPHR_POSTGRES_URL";
/// A file holding the PostgreSQL URL (e.g. a mounted Secret).
pub const ENV_POSTGRES_URL_FILE: &str = "SESPHR_POSTGRES_URL_FILE";
/// PEM roots of the PostgreSQL server's certificate.
pub const ENV_POSTGRES_CA_FILE: &str = "SESPHR_POSTGRES_CA_FILE";
/// Connections per process (default 16).
pub const ENV_POSTGRES_MAX_CONNECTIONS: &str = "SESPHR_POSTGRES_MAX_CONNECTIONS";
/// CloudStorage: the S3 API endpoint (`https://s3.example:3900`).
pub const ENV_S3_ENDPOINT: &str = "SESPHR_S3_ENDPOINT";
/// CloudStorage: the bucket ciphertext is kept in.
pub const ENV_S3_BUCKET: &str = "SESPHR_S3_BUCKET";
/// CloudStorage: the bucket's region (default `garage`).
pub const ENV_S3_REGION: &str = "SESPHR_S3_REGION";
/// CloudStorage: a key prefix inside the bucket (default none).
pub const ENV_S3_PREFIX: &str = "SESPHR_S3_PREFIX";
/// CloudStorage: `true` allows a plain-http endpoint (loopback tests).
pub const ENV_S3_ALLOW_HTTP: &str = "SESPHR_S3_ALLOW_HTTP";
/// CloudStorage: a TOML file with `access_key_id` and `secret_access_key`.
pub const ENV_S3_CREDENTIALS_FILE: &str = "SESPHR_S3_CREDENTIALS_FILE";
/// CloudStorage: the access key id (instead of a credentials file).
pub const ENV_S3_ACCESS_KEY_ID: &str = "SESPHR_S3_ACCESS_KEY_ID";
/// CloudStorage: the secret access key (instead of a credentials file).
pub const ENV_S3_SECRET_ACCESS_KEY: &str = "SESPHR_S3_SECRET_ACCESS_KEY";

/// The `[storage]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub backend: Option<String>,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub s3: S3Section,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub allow_http: Option<bool>,
    pub credentials_file: Option<PathBuf>,
}

/// A resolved, validated storage choice.
#[derive(Debug, Clone, Default)]
pub enum StorageSettings {
    /// The embedded database in `data_dir`.
    #[default]
    Sled,
    /// PostgreSQL metadata; S3 ciphertext for CloudStorage.
    Postgres {
        pg: PgConfig,
        /// Boxed: the settings are large and most deployments have none.
        s3: Option<Box<S3Settings>>,
    },
}

impl StorageSettings {
    /// One line for `--check-config` and the start-up log: where the state
    /// goes, without credentials.
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            StorageSettings::Sled => format!("sled in {}", data_dir.display()),
            StorageSettings::Postgres { pg, s3 } => {
                let mut line = format!("postgres at {}", pg.redacted_url());
                if let Some(s3) = s3 {
                    line.push_str(&format!(
                        ", ciphertext in s3://{}/{} at {}",
                        s3.bucket, s3.prefix, s3.endpoint
                    ));
                }
                line
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StorageSettings::Sled => "sled",
            StorageSettings::Postgres { .. } => "postgres",
        }
    }
}

/// Where CloudStorage's ciphertext objects go (its `Debug` hides the
/// secret key).
pub use sesphr_cloud_storage::remote::S3Config as S3Settings;

struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
}

/// The credentials file's shape (its secret moves into a [`Zeroizing`]
/// without a copy).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

impl StorageSection {
    /// Applies the `SESPHR_*` overrides and checks the choice fits
    /// `service`; every problem goes to `errors`.
    pub fn resolve(
        mut self,
        service: ServiceKind,
        env: &impl Strings,
        errors: &mut Vec<String>,
    ) -> StorageSettings {
        let set = |key: &str, slot: &mut Option<String>| {
            if let Some(v) = env.get(key) {
                *slot = Some(v);
            }
        };
        let set_path = |key: &str, slot: &mut Option<PathBuf>| {
            if let Some(v) = env.get(key) {
                *slot = Some(PathBuf::from(v));
            }
        };
        set(ENV_STORAGE_BACKEND, &mut self.backend);
        set(ENV_POSTGRES_URL, &mut self.postgres.url);
        set_path(ENV_POSTGRES_URL_FILE, &mut self.postgres.url_file);
        set_path(ENV_POSTGRES_CA_FILE, &mut self.postgres.ca_file);
        set(ENV_S3_ENDPOINT, &mut self.s3.endpoint);
        set(ENV_S3_BUCKET, &mut self.s3.bucket);
        set(ENV_S3_REGION, &mut self.s3.region);
        set(ENV_S3_PREFIX, &mut self.s3.prefix);
        set_path(ENV_S3_CREDENTIALS_FILE, &mut self.s3.credentials_file);
        if let Some(v) = env.get(ENV_POSTGRES_MAX_CONNECTIONS) {
            match v.parse() {
                Ok(n) => self.postgres.max_connections = Some(n),
                Err(_) => errors.push(format!(
                    "{ENV_POSTGRES_MAX_CONNECTIONS}={v:?} is not a count"
                )),
            }
        }
        if let Some(v) = env.get(ENV_S3_ALLOW_HTTP) {
            match v.parse() {
                Ok(b) => self.s3.allow_http = Some(b),
                Err(_) => errors.push(format!("{ENV_S3_ALLOW_HTTP} {v:?} must be true or false")),
            }
        }
        let s3_named = self.s3.endpoint.is_some()
            || self.s3.bucket.is_some()
            || self.s3.credentials_file.is_some();
        match self.backend.as_deref().unwrap_or("sled") {
            "sled" => {
                if self.postgres.url.is_some() || self.postgres.url_file.is_some() || s3_named {
                    errors.push(
                        "[storage.postgres] / [storage.s3] are set but storage.backend is sled: \
                         say backend = \"postgres\" to use them"
                            .into(),
                    );
                }
                StorageSettings::Sled
            }
            "postgres" => {
                if service == ServiceKind::SrsNode {
                    errors.push(
                        "storage.backend = \"postgres\" is not for re-encryption nodes: each \
                         node keeps its key-fragment shares apart from the others' (sled in its \
                         own data_dir)"
                            .into(),
                    );
                    return StorageSettings::Sled;
                }
                let pg = self.postgres.resolve(env, errors);
                let s3 = if service == ServiceKind::Service(Service::CloudStorage) {
                    self.s3.resolve(env, errors).map(Box::new)
                } else {
                    if s3_named {
                        errors.push(format!(
                            "[storage.s3] is CloudStorage's ciphertext store, not {service}'s"
                        ));
                    }
                    None
                };
                match pg {
                    Some(pg) => StorageSettings::Postgres { pg, s3 },
                    None => StorageSettings::Sled,
                }
            }
            other => {
                errors.push(format!(
                    "storage.backend {other:?} must be \"sled\" or \"postgres\""
                ));
                StorageSettings::Sled
            }
        }
    }
}

impl PostgresSection {
    fn resolve(self, _env: &impl Strings, errors: &mut Vec<String>) -> Option<PgConfig> {
        let url = match (self.url, &self.url_file) {
            (Some(_), Some(_)) => {
                errors.push("storage.postgres: set url or url_file, not both".into());
                return None;
            }
            (Some(u), None) => u,
            (None, Some(file)) => match read_secret_text(file) {
                Ok(u) => u,
                Err(e) => {
                    errors.push(format!("storage.postgres.url_file: {e}"));
                    return None;
                }
            },
            (None, None) => {
                errors.push(format!(
                    "storage.postgres.url or url_file is required with backend = \"postgres\" \
                     (or set {ENV_POSTGRES_URL_FILE})"
                ));
                return None;
            }
        };
        let mut pg = PgConfig::new(url);
        pg.ca_file = self.ca_file;
        if let Some(n) = self.max_connections {
            pg.max_connections = n;
        }
        if let Some(ms) = self.connect_timeout_ms {
            if !(100..=60_000).contains(&ms) {
                errors.push(format!(
                    "storage.postgres.connect_timeout_ms {ms} must be 100 to 60000"
                ));
            }
            pg.connect_timeout = Duration::from_millis(ms);
        }
        // The URL's text may hold a password: errors never quote it.
        if let Err(e) = pg.validate() {
            errors.push(format!("storage.{e}"));
            return None;
        }
        Some(pg)
    }
}

impl S3Section {
    fn resolve(self, env: &impl Strings, errors: &mut Vec<String>) -> Option<S3Settings> {
        let before = errors.len();
        let endpoint = self.endpoint.unwrap_or_default();
        let allow_http = self.allow_http.unwrap_or(false);
        if endpoint.is_empty() {
            errors.push(format!(
                "storage.s3.endpoint is required for CloudStorage with backend = \"postgres\" \
                 (or set {ENV_S3_ENDPOINT})"
            ));
        } else if endpoint.starts_with("http://") && !allow_http {
            errors.push(format!(
                "storage.s3.endpoint {endpoint:?} is plain http: use https://, or say \
                 allow_http = true (loopback only)"
            ));
        } else if !endpoint.starts_with("https://") && !endpoint.starts_with("http://") {
            errors.push(format!(
                "storage.s3.endpoint {endpoint:?} must start with https://"
            ));
        }
        let bucket = self.bucket.unwrap_or_default();
        if bucket.is_empty() {
            errors.push(format!(
                "storage.s3.bucket is required (or set {ENV_S3_BUCKET})"
            ));
        }
        let prefix = self.prefix.unwrap_or_default();
        if prefix.starts_with('/') || prefix.contains("..") {
            errors.push(format!(
                "storage.s3.prefix {prefix:?} must be relative and without '..'"
            ));
        }
        let creds = match (
            &self.credentials_file,
            env.get(ENV_S3_ACCESS_KEY_ID),
            env.get(ENV_S3_SECRET_ACCESS_KEY),
        ) {
            (Some(file), None, None) => match read_credentials(file) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(format!("storage.s3.credentials_file: {e}"));
                    None
                }
            },
            (None, Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id,
                secret_access_key: Zeroizing::new(secret),
            }),
            (None, None, None) => {
                errors.push(format!(
                    "S3 credentials are required: storage.s3.credentials_file (or \
                     {ENV_S3_CREDENTIALS_FILE}), or {ENV_S3_ACCESS_KEY_ID} and \
                     {ENV_S3_SECRET_ACCESS_KEY}"
                ));
                None
            }
            _ => {
                errors.push(format!(
                    "S3 credentials: give a credentials file, or both {ENV_S3_ACCESS_KEY_ID} and \
                     {ENV_S3_SECRET_ACCESS_KEY}, not a mix"
                ));
                None
            }
        };
        if errors.len() > before {
            return None;
        }
        let creds = creds?;
        Some(S3Settings {
            endpoint,
            region: self.region.unwrap_or_else(|| "garage".into()),
            bucket,
            prefix,
            allow_http,
            access_key_id: creds.access_key_id,
            secret_access_key: creds.secret_access_key,
        })
    }
}

/// A one-line secret from a file (trailing newline dropped), refused when
/// others may read it.
fn read_secret_text(path: &Path) -> Result<String, String> {
    refuse_shared(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.trim_end_matches(['\n', '\r']);
    if line.is_empty() || line.contains('\n') {
        return Err(format!("{}: must hold exactly one line", path.display()));
    }
    Ok(line.to_owned())
}

fn read_credentials(path: &Path) -> Result<Credentials, String> {
    refuse_shared(path)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    // toml's message may quote the offending line: say only where it is.
    let c: CredentialsFile = toml::from_str(&text).map_err(|e| {
        format!(
            "{}: not a TOML file with access_key_id and secret_access_key ({})",
            path.display(),
            e.span()
                .map_or("?".into(), |s| format!("at byte {}", s.start))
        )
    })?;
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
        return Err(format!(
            "{}: access_key_id and secret_access_key must not be empty",
            path.display()
        ));
    }
    Ok(Credentials {
        access_key_id: c.access_key_id,
        secret_access_key: Zeroizing::new(c.secret_access_key),
    })
}

/// Secrets in files readable by group or others are refused (as the
/// daemon's private keys are).
fn refuse_shared(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    // Kubernetes mounts a Secret under fsGroup as 0440, root:<fsGroup>,
    // whatever defaultMode says: group read is fine when that group is one
    // of this process's own (then only this pod's user reads it). Anything
    // for others, or group write, is refused.
    let group_read_only = mode & 0o070 == 0o040;
    let ours = group_read_only && own_groups().contains(&meta.gid());
    if mode & 0o007 != 0 || (mode & 0o070 != 0 && !ours) {
        return Err(format!(
            "{} may be read by others (mode {mode:o}): chmod 600 it (or 0440 with \
             this process's group, as a Kubernetes Secret under fsGroup)",
            path.display(),
        ));
    }
    Ok(())
}

/// This process's effective and supplementary group ids, from
/// /proc/self/status (empty if it cannot be read: then no group counts).
fn own_groups() -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(ids) = line.strip_prefix("Gid:") {
            // real, effective, saved, filesystem: the effective one counts.
            groups.extend(
                ids.split_whitespace()
                    .nth(1)
                    .and_then(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(ids) = line.strip_prefix("Groups:") {
            groups.extend(ids.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(
        toml_text: &str,
        service: ServiceKind,
        e: &HashMap<String, String>,
    ) -> (StorageSettings, Vec<String>) {
        let section: StorageSection = toml::from_str(toml_text).unwrap();
        let mut errors = Vec::new();
        let s = section.resolve(service, e, &mut errors);
        (s, errors)
    }

    const CS: ServiceKind = ServiceKind::Service(Service::CloudStorage);
    const AP: ServiceKind = ServiceKind::Service(Service::AccessPolicy);

    #[test]
    fn sled_is_the_default() {
        let (s, errors) = resolve("", AP, &env(&[]));
        assert!(matches!(s, StorageSettings::Sled), "{s:?}");
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn postgres_from_the_environment() {
        let (s, errors) = resolve(
            "",
            AP,
            &env(&[
                (ENV_STORAGE_BACKEND, "postgres"),
                (
                    ENV_POSTGRES_URL,
                    "postgres://u@127.0.0.1:5432/db?sslmode=disable",
                ),
                (ENV_POSTGRES_MAX_CONNECTIONS, "4"),
            ]),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let StorageSettings::Postgres { pg, s3 } = s else {
            panic!("{s:?}")
        };
        assert_eq!(pg.max_connections, 4);
        assert!(s3.is_none());
    }

    #[test]
    fn cloud_storage_needs_s3_and_tls_unless_told() {
        let text = r#"
            backend = "postgres"
            [postgres]
            url = "postgres://u@db:5432/x"
            [s3]
            endpoint = "http://garage:3900"
            bucket = "b"
        "#;
        let (_, errors) = resolve(text, CS, &env(&[]));
        let all = errors.join("\n");
        assert!(all.contains("ca_file"), "{all}");
        assert!(all.contains("plain http"), "{all}");
        assert!(all.contains("S3 credentials are required"), "{all}");
        let (s, errors) = resolve(
            r#"
            backend = "postgres"
            [postgres]
            url = "postgres://u@127.0.0.1:5432/x?sslmode=disable"
            [s3]
            endpoint = "http://127.0.0.1:3900"
            bucket = "b"
            allow_http = true
        "#,
            CS,
            &env(&[
                (ENV_S3_ACCESS_KEY_ID, "GK1"),
                (ENV_S3_SECRET_ACCESS_KEY, "s3cr3t"),
            ]),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let StorageSettings::Postgres { s3: Some(s3), .. } = s else {
            panic!()
        };
        assert_eq!(s3.bucket, "b");
        assert!(!format!("{s3:?}").contains("s3cr3t"));
    }

    #[test]
    fn nodes_stay_on_sled_and_s3_is_cloud_storage_only() {
        let pg = r#"
            backend = "postgres"
            [postgres]
            url = "postgres://u@127.0.0.1/x?sslmode=disable"
        "#;
        let (_, errors) = resolve(pg, ServiceKind::SrsNode, &env(&[]));
        assert!(
            errors.join("").contains("not for re-encryption nodes"),
            "{errors:?}"
        );
        let (_, errors) = resolve(&format!("{pg}\n[s3]\nbucket = \"b\""), AP, &env(&[]));
        assert!(
            errors.join("").contains("CloudStorage's ciphertext store"),
            "{errors:?}"
        );
        let (_, errors) = resolve("backend = \"mysql\"", AP, &env(&[]));
        assert!(errors.join("").contains("must be \"sled\" or \"postgres\""));
        let (_, errors) = resolve("[postgres]\nurl = \"postgres://x\"", AP, &env(&[]));
        assert!(errors.join("").contains("backend is sled"), "{errors:?}");
    }

    #[test]
    fn secret_files_must_be_private_and_are_never_quoted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://u:hunter2@127.0.0.1/x?sslmode=disable\n").unwrap();
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "backend = \"postgres\"\n[postgres]\nurl_file = \"{}\"",
            url.display()
        );
        let (_, errors) = resolve(&text, AP, &env(&[]));
        assert!(errors.join("").contains("chmod 600"), "{errors:?}");
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (s, errors) = resolve(&text, AP, &env(&[]));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(s, StorageSettings::Postgres { .. }));

        // A Kubernetes Secret under fsGroup: 0440 with this process's group
        // passes; group write, or a group that is not ours, does not.
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o440)).unwrap();
        let (_, errors) = resolve(&text, AP, &env(&[]));
        assert!(errors.is_empty(), "{errors:?}");
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o460)).unwrap();
        let (_, errors) = resolve(&text, AP, &env(&[]));
        assert!(errors.join("").contains("chmod 600"), "{errors:?}");
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o440)).unwrap();
        let foreign = 54_321;
        if !own_groups().contains(&foreign)
            && std::os::unix::fs::chown(&url, None, Some(foreign)).is_ok()
        {
            let (_, errors) = resolve(&text, AP, &env(&[]));
            assert!(errors.join("").contains("chmod 600"), "{errors:?}");
        }
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o600)).unwrap();

        let creds = dir.path().join("creds");
        std::fs::write(
            &creds,
            "access_key_id = \"GK1\"\nsecret_access_key = oops-hunter2\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "backend = \"postgres\"\n[postgres]\nurl = \"postgres://u@127.0.0.1/x?sslmode=disable\"\n\
             [s3]\nendpoint = \"https://s3.example\"\nbucket = \"b\"\ncredentials_file = \"{}\"",
            creds.display()
        );
        let (_, errors) = resolve(&text, CS, &env(&[]));
        let all = errors.join("\n");
        assert!(all.contains("not a TOML file"), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
    }
}

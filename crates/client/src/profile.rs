//! One user's profile on disk (`--home DIR`, mode 0700): identity, master
//! secret, TLS key and certificate, and the current key epoch of each
//! partition.
//!
//! ```text
//! DIR/profile.toml   user id, role, trust domain
//! DIR/master.key     the master secret (hex, 0600) — back this up
//! DIR/tls.key        TLS private key (0600)
//! DIR/tls.pem        client certificate issued at enrollment
//! DIR/ca.pem         mesh CA certificate
//! DIR/epochs.toml    current key epoch per partition (owners)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sesphr_crypto::MasterSecret;
use sesphr_identity::{Identity, Role};
use zeroize::Zeroizing;

use super::ClientError;
use sesphr_mesh::pki::{write_public, write_secret};
use sesphr_mesh::tls::{TlsFiles, TlsMaterial};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    user_id: String,
    role: String,
    trust_domain: String,
}

/// A user's local profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile's directory.
    pub home: PathBuf,
    /// The user the profile belongs to.
    pub identity: Identity,
}

impl Profile {
    fn path(home: &Path, name: &str) -> PathBuf {
        home.join(name)
    }

    /// Whether `home` already holds a profile.
    pub fn exists(home: &Path) -> bool {
        Self::path(home, "profile.toml").exists()
    }

    /// Writes a new profile (refuses to overwrite one).
    pub fn create(
        home: &Path,
        identity: &Identity,
        master: &MasterSecret,
        tls_key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, ClientError> {
        if Self::exists(home) {
            return Err(ClientError::Profile(format!(
                "{} already holds a profile; use another --home",
                home.display()
            )));
        }
        std::fs::create_dir_all(home).map_err(|e| ClientError::io(home, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ClientError::io(home, e))?;
        let (role, user_id) = identity
            .as_user()
            .ok_or_else(|| ClientError::Profile("only users have profiles".into()))?;
        let file = ProfileFile {
            user_id: user_id.to_owned(),
            role: role.as_str().to_owned(),
            trust_domain: identity.trust_domain.clone(),
        };
        let master_hex = Zeroizing::new(hex::encode(master.to_bytes().as_slice()));
        write_secret(&Self::path(home, "master.key"), master_hex.as_bytes())?;
        write_secret(&Self::path(home, "tls.key"), tls_key_pem.as_bytes())?;
        write_public(&Self::path(home, "tls.pem"), cert_pem.as_bytes())?;
        write_public(&Self::path(home, "ca.pem"), ca_pem.as_bytes())?;
        // profile.toml last: its presence means the profile is complete.
        let text = toml::to_string(&file).expect("profile serializes");
        write_public(&Self::path(home, "profile.toml"), text.as_bytes())?;
        Ok(Self {
            home: home.to_owned(),
            identity: identity.clone(),
        })
    }

    /// Reads the profile in `home`.
    pub fn load(home: &Path) -> Result<Self, ClientError> {
        let path = Self::path(home, "profile.toml");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            ClientError::Profile(format!(
                "no profile in {}; run `sesphr enroll` first (or pass --home / SESPHR_HOME)",
                home.display()
            ))
        })?;
        let file: ProfileFile = toml::from_str(&text)
            .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display())))?;
        let role: Role = file
            .role
            .parse()
            .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display())))?;
        let identity = Identity::user(&file.trust_domain, role, &file.user_id)
            .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display())))?;
        Ok(Self {
            home: home.to_owned(),
            identity,
        })
    }

    /// The profile's user id.
    pub fn user_id(&self) -> &str {
        self.identity
            .as_user()
            .map(|(_, id)| id)
            .unwrap_or_default()
    }

    /// The profile's role.
    pub fn role(&self) -> Role {
        self.identity
            .as_user()
            .map(|(r, _)| r)
            .unwrap_or(Role::Patient)
    }

    /// Reads the master secret every key of the user derives from.
    pub fn master_secret(&self) -> Result<MasterSecret, ClientError> {
        let path = Self::path(&self.home, "master.key");
        let text =
            Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| ClientError::io(&path, e))?);
        let bytes = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| ClientError::Profile(format!("{} is not hex", path.display())))?,
        );
        MasterSecret::from_bytes(&bytes)
            .map_err(|_| ClientError::Profile(format!("{} is not a master secret", path.display())))
    }

    /// Loads the TLS key, certificate and CA the user's mTLS runs on.
    pub fn tls(&self) -> Result<TlsMaterial, ClientError> {
        Ok(TlsMaterial::load(&TlsFiles {
            cert: Self::path(&self.home, "tls.pem"),
            key: Self::path(&self.home, "tls.key"),
            ca: Self::path(&self.home, "ca.pem"),
        })?)
    }

    fn epochs_path(&self) -> PathBuf {
        Self::path(&self.home, "epochs.toml")
    }

    fn epochs(&self) -> Result<BTreeMap<String, u32>, ClientError> {
        let path = self.epochs_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ClientError::io(&path, e)),
        }
    }

    /// The key epoch new records of `partition` are encrypted under.
    pub fn current_epoch(&self, partition: &str) -> Result<u32, ClientError> {
        Ok(self.epochs()?.get(partition).copied().unwrap_or(0))
    }

    /// Saves `epoch` as the one new records of `partition` use.
    pub fn set_epoch(&self, partition: &str, epoch: u32) -> Result<(), ClientError> {
        let mut all = self.epochs()?;
        all.insert(partition.to_owned(), epoch);
        let text = toml::to_string(&all).expect("epochs serialize");
        write_public(&self.epochs_path(), text.as_bytes())?;
        Ok(())
    }
}

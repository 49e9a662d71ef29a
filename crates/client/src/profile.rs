//! One user's profile on disk (`--home DIR`, mode 0700): identity, master
//! secret, TLS key and certificate, and the current key epoch of each
//! partition.
//!
//! ```text
//! DIR/profile.toml   user id, role, trust domain
//! DIR/master.key     the master secret (hex, 0600) — back this up
//! DIR/tls.key        TLS private key (PEM, 0600)
//! DIR/tls.pem        client certificate issued at enrollment
//! DIR/ca.pem         mesh CA certificate
//! DIR/epochs.toml    current key epoch per partition (owners)
//! ```
//!
//! A profile may be protected by a passphrase: `master.key` and `tls.key`
//! are then sealed files ([`crate::sealed`]) instead of hex and PEM, both
//! under the same passphrase. Readers tell the two apart by the file's
//! first bytes, so unprotected profiles keep loading. The passphrase comes
//! from [`Profile::with_passphrase`], else from the process's prompt
//! ([`set_passphrase_prompt`]), asked only when a sealed file is read.
//! [`Profile::set_passphrase`] adds, changes or removes it for both files
//! at once: new files are written beside the old ones and a commit marker
//! (`DIR/secrets.commit`) makes the two renames roll forward on the next
//! load if a crash interrupts them, so a profile is never left with one
//! file under the old passphrase and one under the new. A change holds an
//! exclusive lock on `DIR/.lock` for its whole run, as do a rewrite of the
//! TLS key and a load's recovery of an interrupted change, so concurrent
//! commands on one profile never see, drop or undo half of a change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use sesphr_crypto::MasterSecret;
use sesphr_identity::{Identity, Role};
use zeroize::Zeroizing;

use super::ClientError;
use crate::sealed::{self, Passphrase, SealError};
use sesphr_mesh::pki::{write_public, write_secret};
use sesphr_mesh::tls::TlsMaterial;

/// The profile's secret files, as they are named and as their sealed form
/// names its role.
pub(crate) const MASTER_KEY: &str = "master.key";
pub(crate) const TLS_KEY: &str = "tls.key";
/// Present while a change of passphrase is being committed.
const COMMIT_MARKER: &str = "secrets.commit";
/// Suffix of a secret file's replacement during a change of passphrase.
const NEXT: &str = "next";
/// The lock a change of the secret files holds.
const LOCK: &str = ".lock";

/// Holds the profile's exclusive lock on `DIR/.lock` (released on drop),
/// waiting for whoever holds it now.
pub(crate) fn lock_secrets(home: &Path) -> Result<std::fs::File, ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ClientError::io(&path, e))?;
    file.lock().map_err(|e| ClientError::io(&path, e))?;
    Ok(file)
}

/// What asks for a passphrase when a profile without one reads a sealed
/// file: given the file, the passphrase (or why there is none).
pub type PassphrasePrompt = dyn Fn(&Path) -> Result<Zeroizing<String>, String> + Send + Sync;

static PROMPT: OnceLock<Box<PassphrasePrompt>> = OnceLock::new();

/// Installs the process's passphrase prompt (the CLI's asks on the
/// terminal or reads `SESPHR_PASSPHRASE`); once per process. Returns
/// whether it was installed (false: one already was).
pub fn set_passphrase_prompt(
    prompt: impl Fn(&Path) -> Result<Zeroizing<String>, String> + Send + Sync + 'static,
) -> bool {
    PROMPT.set(Box::new(prompt)).is_ok()
}

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
    /// The passphrase its sealed files open with, once known (given, or
    /// asked once and shared by the clones).
    passphrase: Arc<OnceLock<Passphrase>>,
}

impl Profile {
    fn path(home: &Path, name: &str) -> PathBuf {
        home.join(name)
    }

    /// Whether `home` already holds a profile.
    pub fn exists(home: &Path) -> bool {
        Self::path(home, "profile.toml").exists()
    }

    /// Writes a new profile (refuses to overwrite one), unprotected.
    pub fn create(
        home: &Path,
        identity: &Identity,
        master: &MasterSecret,
        tls_key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, ClientError> {
        Self::create_with(
            home,
            identity,
            master,
            tls_key_pem,
            cert_pem,
            ca_pem,
            NewProfile::default(),
        )
    }

    /// Writes a new profile (refuses to overwrite one): its secret files
    /// sealed under `new.passphrase` from the start if one is given, and
    /// `new.files` (epochs, ledger, pins of a restored profile) written
    /// before `profile.toml`, whose presence means the profile is complete.
    pub fn create_with(
        home: &Path,
        identity: &Identity,
        master: &MasterSecret,
        tls_key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
        new: NewProfile<'_>,
    ) -> Result<Self, ClientError> {
        if let Some(p) = new.passphrase
            && p.is_empty()
        {
            return Err(ClientError::Invalid("a passphrase may not be empty".into()));
        }
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
        let master_hex = master_hex(master);
        let seal = |role: &str, plain: &[u8]| encode_secret(role, plain, new.passphrase);
        write_secret(
            &Self::path(home, MASTER_KEY),
            &seal(MASTER_KEY, master_hex.as_bytes())?,
        )?;
        write_secret(
            &Self::path(home, TLS_KEY),
            &seal(TLS_KEY, tls_key_pem.as_bytes())?,
        )?;
        write_public(&Self::path(home, "tls.pem"), cert_pem.as_bytes())?;
        write_public(&Self::path(home, "ca.pem"), ca_pem.as_bytes())?;
        if !new.epochs.is_empty() {
            let text = toml::to_string(new.epochs).expect("epochs serialize");
            write_public(&Self::path(home, "epochs.toml"), text.as_bytes())?;
        }
        for (name, text) in new.files {
            write_public(&Self::path(home, name), text.as_bytes())?;
        }
        // profile.toml last: its presence means the profile is complete.
        let text = toml::to_string(&file).expect("profile serializes");
        write_public(&Self::path(home, "profile.toml"), text.as_bytes())?;
        let profile = Self {
            home: home.to_owned(),
            identity: identity.clone(),
            passphrase: Arc::default(),
        };
        Ok(match new.passphrase {
            Some(p) => profile.with_passphrase(p.clone()),
            None => profile,
        })
    }

    /// The same profile, opening its sealed files with `passphrase`.
    pub fn with_passphrase(mut self, passphrase: Passphrase) -> Self {
        self.passphrase = Arc::new(OnceLock::from(passphrase));
        self
    }

    /// Whether the profile's secrets are sealed under a passphrase.
    pub fn is_protected(&self) -> Result<bool, ClientError> {
        let path = Self::path(&self.home, MASTER_KEY);
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| ClientError::io(&path, e))?);
        Ok(sealed::is_sealed(&bytes))
    }

    /// The passphrase, given or asked for (once) because `path` is sealed.
    fn unlock(&self, path: &Path) -> Result<&Passphrase, ClientError> {
        if let Some(p) = self.passphrase.get() {
            return Ok(p);
        }
        let prompt = PROMPT.get().ok_or_else(|| {
            ClientError::Profile(format!(
                "{} is protected by a passphrase and none was given",
                path.display()
            ))
        })?;
        let secret = prompt(path).map_err(|why| {
            ClientError::Profile(format!(
                "{} is protected by a passphrase: {why}",
                path.display()
            ))
        })?;
        if secret.is_empty() {
            return Err(ClientError::Profile(format!(
                "{} is protected by a passphrase and none was given",
                path.display()
            )));
        }
        Ok(self.passphrase.get_or_init(|| Passphrase::new(secret)))
    }

    /// A secret file's plaintext: as it is, or opened with the passphrase
    /// if it is sealed.
    fn read_secret(&self, role: &str) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let path = Self::path(&self.home, role);
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| ClientError::io(&path, e))?);
        if !sealed::is_sealed(&bytes) {
            return Ok(bytes);
        }
        let passphrase = self.unlock(&path)?;
        sealed::open(role, &bytes, passphrase).map_err(|e| sealed_error(&path, e))
    }

    /// `plain` as the file of `role` holds it in this profile: sealed
    /// under its passphrase if that file is sealed now, else as it is.
    pub(crate) fn encode_like_current(
        &self,
        role: &str,
        plain: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let path = Self::path(&self.home, role);
        let current = Zeroizing::new(std::fs::read(&path).map_err(|e| ClientError::io(&path, e))?);
        if !sealed::is_sealed(&current) {
            return Ok(Zeroizing::new(plain.to_vec()));
        }
        let passphrase = self.unlock(&path)?;
        // The passphrase must open what is there before anything is
        // written under it.
        sealed::open(role, &current, passphrase).map_err(|e| sealed_error(&path, e))?;
        encode_secret(role, plain, Some(passphrase))
    }

    /// Seals both secret files under `new` (adding or changing the
    /// passphrase) or, with `None`, stores them unprotected again. Both
    /// files are first opened with the current passphrase (nothing is
    /// written if it is wrong), then replaced together (see the module
    /// docs). Returns the profile opening with the new passphrase.
    pub fn set_passphrase(&self, new: Option<&Passphrase>) -> Result<Self, ClientError> {
        if let Some(p) = new
            && p.is_empty()
        {
            return Err(ClientError::Invalid("a passphrase may not be empty".into()));
        }
        // Held until the change is complete (or refused).
        let _lock = lock_secrets(&self.home)?;
        recover_locked(&self.home)?;
        let master = self.read_secret(MASTER_KEY)?;
        let tls_key = self.read_secret(TLS_KEY)?;
        let next = |role: &str| Self::path(&self.home, &format!("{role}.{NEXT}"));
        write_secret(&next(MASTER_KEY), &encode_secret(MASTER_KEY, &master, new)?)?;
        write_secret(&next(TLS_KEY), &encode_secret(TLS_KEY, &tls_key, new)?)?;
        // From here on the change rolls forward, even after a crash.
        write_public(&Self::path(&self.home, COMMIT_MARKER), b"")?;
        roll_forward(&self.home)?;
        let profile = Self {
            home: self.home.clone(),
            identity: self.identity.clone(),
            passphrase: Arc::default(),
        };
        Ok(match new {
            Some(p) => profile.with_passphrase(p.clone()),
            None => profile,
        })
    }

    /// Reads the profile in `home` (finishing a change of passphrase that
    /// a crash interrupted).
    pub fn load(home: &Path) -> Result<Self, ClientError> {
        recover_passphrase_change(home)?;
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
            passphrase: Arc::default(),
        })
    }

    /// The profile's user id.
    pub fn user_id(&self) -> &str {
        user_of(&self.identity).1
    }

    /// The profile's role.
    pub fn role(&self) -> Role {
        user_of(&self.identity).0
    }

    /// Reads the master secret every key of the user derives from.
    pub fn master_secret(&self) -> Result<MasterSecret, ClientError> {
        let path = Self::path(&self.home, MASTER_KEY);
        let plain = self.read_secret(MASTER_KEY)?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| ClientError::Profile(format!("{} is not hex", path.display())))?;
        let bytes = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| ClientError::Profile(format!("{} is not hex", path.display())))?,
        );
        MasterSecret::from_bytes(&bytes)
            .map_err(|_| ClientError::Profile(format!("{} is not a master secret", path.display())))
    }

    /// The TLS private key (PEM), opened if it is sealed.
    pub fn tls_key_pem(&self) -> Result<Zeroizing<String>, ClientError> {
        let path = Self::path(&self.home, TLS_KEY);
        let plain = self.read_secret(TLS_KEY)?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| ClientError::Profile(format!("{} is not a PEM key", path.display())))?;
        Ok(Zeroizing::new(text.to_owned()))
    }

    /// Loads the TLS key, certificate and CA the user's mTLS runs on.
    pub fn tls(&self) -> Result<TlsMaterial, ClientError> {
        let read = |name: &str| {
            let path = Self::path(&self.home, name);
            std::fs::read_to_string(&path).map_err(|e| ClientError::io(&path, e))
        };
        let (cert, ca) = (read("tls.pem")?, read("ca.pem")?);
        let key = self.tls_key_pem()?;
        TlsMaterial::from_pem(cert, key, ca).map_err(|e| {
            ClientError::Profile(format!(
                "{}: the TLS key, certificate or CA does not load ({e})",
                self.home.display()
            ))
        })
    }

    fn epochs_path(&self) -> PathBuf {
        Self::path(&self.home, "epochs.toml")
    }

    /// The current key epoch of every partition that has moved past 0.
    pub fn epochs(&self) -> Result<BTreeMap<String, u32>, ClientError> {
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
        self.set_epochs(&all)
    }

    /// Saves every partition's epoch at once.
    pub fn set_epochs(&self, all: &BTreeMap<String, u32>) -> Result<(), ClientError> {
        let text = toml::to_string(all).expect("epochs serialize");
        write_public(&self.epochs_path(), text.as_bytes())?;
        Ok(())
    }
}

/// What a new profile starts with besides its keys and certificate.
#[derive(Debug, Clone, Copy)]
pub struct NewProfile<'a> {
    /// Seal the secret files under this passphrase from the start.
    pub passphrase: Option<&'a Passphrase>,
    /// Key epochs (a restored profile's).
    pub epochs: &'a BTreeMap<String, u32>,
    /// Further files by name (a restored profile's ledger and pins); the
    /// caller names only files a profile has.
    pub files: &'a [(&'a str, &'a str)],
}

static NO_EPOCHS: BTreeMap<String, u32> = BTreeMap::new();

impl Default for NewProfile<'_> {
    fn default() -> Self {
        Self {
            passphrase: None,
            epochs: &NO_EPOCHS,
            files: &[],
        }
    }
}

fn master_hex(master: &MasterSecret) -> Zeroizing<String> {
    Zeroizing::new(hex::encode(master.to_bytes().as_slice()))
}

/// A secret file's bytes: `plain`, or sealed as `role` under `passphrase`.
fn encode_secret(
    role: &str,
    plain: &[u8],
    passphrase: Option<&Passphrase>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    match passphrase {
        None => Ok(Zeroizing::new(plain.to_vec())),
        Some(p) => sealed::seal(role, plain, p)
            .map(|text| Zeroizing::new(text.into_bytes()))
            .map_err(|e| ClientError::Invalid(format!("cannot seal {role}: {e}"))),
    }
}

/// The one line a sealed file's refusal is.
pub(crate) fn sealed_error(path: &Path, e: SealError) -> ClientError {
    let path = path.display();
    ClientError::Profile(match e {
        SealError::WrongPassphrase => format!("wrong passphrase for {path}"),
        other => format!("{path}: {other}"),
    })
}

/// Finishes a change of passphrase whose commit marker is on disk (its new
/// files were complete before the marker was written); drops the
/// replacements of one that never committed.
fn recover_passphrase_change(home: &Path) -> Result<(), ClientError> {
    let pending = [COMMIT_MARKER, "master.key.next", "tls.key.next"]
        .iter()
        .any(|name| home.join(name).exists());
    if !pending {
        return Ok(());
    }
    // A change may be running: wait for it, then look again.
    let _lock = lock_secrets(home)?;
    recover_locked(home)
}

/// [`recover_passphrase_change`] with the lock held.
fn recover_locked(home: &Path) -> Result<(), ClientError> {
    if home.join(COMMIT_MARKER).exists() {
        return roll_forward(home);
    }
    for role in [MASTER_KEY, TLS_KEY] {
        let next = home.join(format!("{role}.{NEXT}"));
        match std::fs::remove_file(&next) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ClientError::io(&next, e)),
        }
    }
    Ok(())
}

/// Renames each `ROLE.next` over `ROLE`, syncs the directory, removes the
/// commit marker. Idempotent: a rename already done is skipped, a marker
/// already removed is success.
fn roll_forward(home: &Path) -> Result<(), ClientError> {
    for role in [MASTER_KEY, TLS_KEY] {
        let next = home.join(format!("{role}.{NEXT}"));
        if next.exists() {
            std::fs::rename(&next, home.join(role)).map_err(|e| ClientError::io(&next, e))?;
        }
    }
    sync_dir(home)?;
    let marker = home.join(COMMIT_MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ClientError::io(&marker, e)),
    }
    sync_dir(home)
}

fn sync_dir(dir: &Path) -> Result<(), ClientError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ClientError::io(dir, e))
}

/// A profile's or a backup's identity as (role, user id). Both are checked
/// to be a user's when they are read or made, so the fallback is never
/// what a caller sees.
pub(crate) fn user_of(identity: &Identity) -> (Role, &str) {
    identity.as_user().unwrap_or((Role::Patient, ""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::KdfParams;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(s.to_owned())).with_kdf(KdfParams::INSECURE_TEST)
    }

    #[test]
    fn plain_profiles_keep_loading_and_a_passphrase_comes_and_goes() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("p");
        let identity = Identity::user("sesphr.local", Role::Patient, "alice").unwrap();
        let master = MasterSecret::generate(&mut rand::rng());
        let (_, key) = sesphr_mesh::pki::make_csr().unwrap();
        let plain = Profile::create(&home, &identity, &master, &key, "c", "ca").unwrap();
        let hex_file = std::fs::read_to_string(home.join(MASTER_KEY)).unwrap();
        assert_eq!(hex_file, hex::encode(master.to_bytes().as_slice()));
        assert!(!plain.is_protected().unwrap());
        let loaded = Profile::load(&home).unwrap();
        assert_eq!(
            loaded.master_secret().unwrap().to_bytes(),
            master.to_bytes()
        );
        assert_eq!(loaded.tls_key_pem().unwrap().as_str(), key);

        let sealed = loaded.set_passphrase(Some(&pass("pw"))).unwrap();
        assert!(sealed.is_protected().unwrap());
        for role in [MASTER_KEY, TLS_KEY] {
            assert!(sealed::is_sealed(&std::fs::read(home.join(role)).unwrap()));
        }
        assert_eq!(
            sealed.master_secret().unwrap().to_bytes(),
            master.to_bytes()
        );
        // Loaded afresh: no passphrase, no prompt in this process.
        let err = Profile::load(&home).unwrap().master_secret().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is protected by a passphrase and none was given",
                home.join(MASTER_KEY).display()
            )
        );
        let before = std::fs::read(home.join(MASTER_KEY)).unwrap();
        let wrong = Profile::load(&home).unwrap().with_passphrase(pass("nope"));
        let err = wrong.set_passphrase(None).unwrap_err();
        assert!(err.to_string().starts_with("wrong passphrase for"), "{err}");
        assert_eq!(std::fs::read(home.join(MASTER_KEY)).unwrap(), before);
        // The TLS key rewritten by a renewal stays sealed.
        let (_, new_key) = sesphr_mesh::pki::make_csr().unwrap();
        sealed.install_certificate("c2", Some(&new_key)).unwrap();
        assert!(sealed::is_sealed(
            &std::fs::read(home.join(TLS_KEY)).unwrap()
        ));
        assert_eq!(sealed.tls_key_pem().unwrap().as_str(), new_key);

        let plain = sealed.set_passphrase(None).unwrap();
        assert!(!plain.is_protected().unwrap());
        assert_eq!(
            Profile::load(&home)
                .unwrap()
                .tls_key_pem()
                .unwrap()
                .as_str(),
            new_key
        );
        assert!(plain.set_passphrase(Some(&pass(""))).is_err());
    }

    #[test]
    fn a_change_of_passphrase_is_whole_while_other_commands_load_the_profile() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("p");
        let identity = Identity::user("sesphr.local", Role::Patient, "alice").unwrap();
        let master = MasterSecret::generate(&mut rand::rng());
        let (_, key) = sesphr_mesh::pki::make_csr().unwrap();
        let new = NewProfile {
            passphrase: Some(&pass("pw0")),
            ..Default::default()
        };
        Profile::create_with(&home, &identity, &master, &key, "c", "ca", new).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let loader = {
            let (home, stop) = (home.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = Profile::load(&home);
                }
            })
        };
        let opens = |pw: &str| {
            let p = Profile::load(&home).unwrap().with_passphrase(pass(pw));
            p.master_secret()
                .is_ok_and(|m| m.to_bytes() == master.to_bytes())
                && p.tls_key_pem().is_ok_and(|k| k.as_str() == key)
        };
        let mut current = "pw0".to_owned();
        for i in 1..=20 {
            let next = format!("pw{i}");
            let profile = Profile::load(&home)
                .unwrap()
                .with_passphrase(pass(&current));
            match profile.set_passphrase(Some(&pass(&next))) {
                Ok(_) => {
                    assert!(opens(&next), "change {i} returned Ok but is not whole");
                    current = next;
                }
                Err(e) => assert!(opens(&current), "change {i} failed ({e}) and broke"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        loader.join().unwrap();
        assert!(opens(&current));
        assert_eq!(current, "pw20", "every change should have gone through");
    }
}

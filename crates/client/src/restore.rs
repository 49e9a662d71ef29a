//! A patient who loses her device loses nothing: a backup file, a recovery
//! phrase, and restoring a profile from either on a new device.
//!
//! - A **backup file** ([`Backup`]) is one file sealed under a passphrase
//!   ([`crate::sealed`], role `backup`) holding everything needed to act
//!   as the user again: identity (user id, role, trust domain), the master
//!   secret, the key epochs, the mesh CA, and the profile's grant ledger,
//!   pinned keys and pinned audit checkpoint. Not the TLS key: a restore
//!   gets a fresh one.
//! - The **recovery phrase** ([`recovery_phrase`]) is the 32-byte master
//!   secret as 24 BIP-39 English words with their 8-bit checksum: the keys
//!   and nothing else (no ledger, no pins, no epochs).
//! - [`restore`] turns either into a profile in a new directory: a new TLS
//!   key and a certificate obtained by a proof of possession of the
//!   registered key ([`crate::admin::obtain_device_certificate`]), the
//!   epochs reconciled with what the mesh shows ([`reconcile_epochs`]).
//!   Nothing is written until all of that succeeded.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sesphr_crypto::MasterSecret;
use sesphr_identity::{Identity, Role};
use sesphr_mesh::tls::TlsMaterial;
use zeroize::{Zeroize, Zeroizing};

use crate::profile::{NewProfile, sealed_error};
use crate::raw::MeshClients;
use crate::sealed::{self, Passphrase};
use crate::{ClientError, Grants, MeshFile, Profile, bounds, rpc, unary};
use sesphr::proto;

/// The role a backup file's sealed form names.
pub const BACKUP_ROLE: &str = "backup";
/// The format of a backup's plaintext.
const BACKUP_FORMAT: &str = "sesphr-backup-v1";
/// The profile files a backup carries besides its keys: the grant ledger,
/// the pinned keys of others, the pinned audit checkpoint.
const KEPT_FILES: [&str; 3] = ["grants.toml", "known_keys.toml", "audit-head.toml"];
/// The largest backup file read (a profile's ledger and pins are small).
const MAX_BACKUP_BYTES: u64 = 16 << 20;

/// A backup's plaintext, as TOML.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupFile {
    format: String,
    user_id: String,
    role: String,
    trust_domain: String,
    created_at: i64,
    master_secret: String,
    ca_pem: String,
    #[serde(default)]
    epochs: BTreeMap<String, u32>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

impl Drop for BackupFile {
    fn drop(&mut self) {
        self.master_secret.zeroize();
    }
}

/// Everything needed to act as a user again (see the module docs).
#[derive(Clone)]
pub struct Backup {
    identity: Identity,
    master: MasterSecret,
    epochs: BTreeMap<String, u32>,
    ca_pem: String,
    files: BTreeMap<String, String>,
    created_at: i64,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("identity", &self.identity)
            .field("epochs", &self.epochs)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl Backup {
    /// What `profile` holds now (its master secret read, so a protected
    /// profile needs its passphrase).
    pub fn of_profile(profile: &Profile) -> Result<Self, ClientError> {
        let master = profile.master_secret()?;
        let ca_path = profile.home.join("ca.pem");
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| ClientError::io(&ca_path, e))?;
        let mut files = BTreeMap::new();
        for name in KEPT_FILES {
            let path = profile.home.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    files.insert(name.to_owned(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ClientError::io(&path, e)),
            }
        }
        Ok(Self {
            identity: profile.identity.clone(),
            master,
            epochs: profile.epochs()?,
            ca_pem,
            files,
            created_at: crate::unix_now(),
        })
    }

    /// The user it restores.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        crate::profile::user_of(&self.identity).1
    }

    /// The role.
    pub fn role(&self) -> Role {
        crate::profile::user_of(&self.identity).0
    }

    /// The key epochs when it was made.
    pub fn epochs(&self) -> &BTreeMap<String, u32> {
        &self.epochs
    }

    /// When it was made (Unix seconds, the maker's clock).
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    /// The master secret.
    pub fn master(&self) -> &MasterSecret {
        &self.master
    }

    /// Whether it carries the grant ledger.
    pub fn has_ledger(&self) -> bool {
        self.files.contains_key("grants.toml")
    }

    /// The backup sealed under `passphrase`: the text of a backup file.
    pub fn seal(&self, passphrase: &Passphrase) -> Result<String, ClientError> {
        let (role, user_id) = self
            .identity
            .as_user()
            .ok_or_else(|| ClientError::Profile("only users have backups".into()))?;
        let file = BackupFile {
            format: BACKUP_FORMAT.to_owned(),
            user_id: user_id.to_owned(),
            role: role.as_str().to_owned(),
            trust_domain: self.identity.trust_domain.clone(),
            created_at: self.created_at,
            master_secret: hex::encode(self.master.to_bytes().as_slice()),
            ca_pem: self.ca_pem.clone(),
            epochs: self.epochs.clone(),
            files: self.files.clone(),
        };
        let text = Zeroizing::new(toml::to_string(&file).expect("a backup serializes"));
        sealed::seal(BACKUP_ROLE, text.as_bytes(), passphrase)
            .map_err(|e| ClientError::Invalid(format!("cannot seal the backup: {e}")))
    }

    /// Opens the text of a backup file; `name` is how errors call it.
    pub fn open(bytes: &[u8], passphrase: &Passphrase, name: &Path) -> Result<Self, ClientError> {
        if !sealed::is_sealed(bytes) {
            return Err(ClientError::Profile(format!(
                "{} is not a sesphr backup file",
                name.display()
            )));
        }
        let plain =
            sealed::open(BACKUP_ROLE, bytes, passphrase).map_err(|e| sealed_error(name, e))?;
        let bad = |why: String| {
            ClientError::Profile(format!(
                "{}: corrupted: {why}",
                crate::printable(&name.display().to_string())
            ))
        };
        let text = std::str::from_utf8(&plain).map_err(|_| bad("not text".into()))?;
        let file: BackupFile = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
        if file.format != BACKUP_FORMAT {
            return Err(bad(format!(
                "backup format {:?}, this version reads {BACKUP_FORMAT}",
                crate::printable(&file.format)
            )));
        }
        let role: Role = file.role.parse().map_err(|e| bad(format!("role: {e}")))?;
        let identity = Identity::user(&file.trust_domain, role, &file.user_id)
            .map_err(|e| bad(e.to_string()))?;
        let secret = Zeroizing::new(
            hex::decode(file.master_secret.trim()).map_err(|_| bad("master secret".into()))?,
        );
        let master = MasterSecret::from_bytes(&secret).map_err(|_| bad("master secret".into()))?;
        if let Some(name) = file
            .files
            .keys()
            .find(|n| !KEPT_FILES.contains(&n.as_str()))
        {
            return Err(bad(format!("unexpected file {:?}", crate::printable(name))));
        }
        Ok(Self {
            identity,
            master,
            epochs: file.epochs.clone(),
            ca_pem: file.ca_pem.clone(),
            files: file.files.clone(),
            created_at: file.created_at,
        })
    }

    /// Writes the backup sealed under `passphrase` to `path`, mode 0600 and
    /// durably (a temporary file beside it, synced, then linked into
    /// place, the directory synced). Refuses an existing `path` unless
    /// `overwrite`.
    pub fn write(
        &self,
        path: &Path,
        passphrase: &Passphrase,
        overwrite: bool,
    ) -> Result<(), ClientError> {
        let text = self.seal(passphrase)?;
        if !overwrite && path.exists() {
            return Err(ClientError::Invalid(format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            )));
        }
        write_durably(path, text.as_bytes(), overwrite)
    }

    /// Reads and opens the backup file at `path`.
    pub fn read(path: &Path, passphrase: &Passphrase) -> Result<Self, ClientError> {
        use std::io::Read as _;
        let f = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
        let mut bytes = Zeroizing::new(Vec::new());
        f.take(MAX_BACKUP_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::io(path, e))?;
        if bytes.len() as u64 > MAX_BACKUP_BYTES {
            return Err(ClientError::Profile(format!(
                "{} is larger than any backup file",
                path.display()
            )));
        }
        Self::open(&bytes, passphrase, path)
    }
}

/// Writes `bytes` to `path` (0600): a synced temporary file beside it,
/// renamed over it (`overwrite`) or hard-linked to it (refusing an
/// existing file atomically), then the directory synced.
fn write_durably(path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), ClientError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| ClientError::Invalid(format!("{} is not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ClientError::io(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ClientError::io(&tmp, e))?;
        if overwrite {
            std::fs::rename(&tmp, path).map_err(|e| ClientError::io(path, e))?;
        } else {
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ClientError::Invalid(format!(
                        "{} already exists; pass --force to overwrite it",
                        path.display()
                    ))
                } else {
                    ClientError::io(path, e)
                }
            })?;
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ClientError::io(&dir, e))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The master secret as 24 BIP-39 English words (the last carries the
/// 8-bit checksum), space-separated.
pub fn recovery_phrase(master: &MasterSecret) -> Zeroizing<String> {
    let bytes = master.to_bytes();
    let mnemonic =
        bip39::Mnemonic::from_entropy(bytes.as_slice()).expect("32 bytes is valid BIP-39 entropy");
    let words: Vec<&str> = mnemonic.words().collect();
    Zeroizing::new(words.join(" "))
}

/// Number of words of a recovery phrase.
pub const PHRASE_WORDS: usize = 24;

/// The master secret of a recovery phrase (case and spacing do not
/// matter); a wrong word count, a word not in the list or a checksum that
/// does not match is one line saying which.
pub fn master_from_phrase(phrase: &str) -> Result<MasterSecret, ClientError> {
    let normal = Zeroizing::new(
        phrase
            .split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let words: Vec<&str> = normal.split(' ').filter(|w| !w.is_empty()).collect();
    if words.len() != PHRASE_WORDS {
        return Err(ClientError::Invalid(format!(
            "a recovery phrase has {PHRASE_WORDS} words; this one has {}",
            words.len()
        )));
    }
    let mnemonic = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &normal)
        .map_err(|e| {
            ClientError::Invalid(match e {
                bip39::Error::UnknownWord(i) => format!(
                    "word {} of the recovery phrase ({:?}) is not in the BIP-39 English list",
                    i + 1,
                    crate::printable(words.get(i).copied().unwrap_or_default())
                ),
                bip39::Error::InvalidChecksum => "the recovery phrase's checksum does not match: \
                     a word is mistyped, swapped or missing"
                    .to_owned(),
                other => format!("not a recovery phrase: {other}"),
            })
        })?;
    let (entropy, len) = mnemonic.to_entropy_array();
    let entropy = Zeroizing::new(entropy);
    MasterSecret::from_bytes(&entropy[..len])
        .map_err(|_| ClientError::Invalid("not a 24-word recovery phrase".into()))
}

/// Where a restored profile's keys come from.
#[derive(Debug)]
pub enum RestoreFrom {
    /// A backup file, opened.
    Backup(Box<Backup>),
    /// A recovery phrase: the keys only, so the id (and, optionally, the
    /// role: `None` takes the registered one) are the caller's.
    Phrase {
        /// From [`master_from_phrase`].
        master: MasterSecret,
        /// The user id it was registered under.
        user_id: String,
        /// The role it was registered under, if known.
        role: Option<Role>,
    },
}

/// A partition whose key epoch the mesh showed above the profile's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaisedEpoch {
    /// The partition.
    pub partition: String,
    /// The profile's (or backup's) epoch.
    pub was: u32,
    /// The epoch it starts with now.
    pub now: u32,
}

/// How a restored profile is set up.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreOptions<'a> {
    /// The name of the new device (`None`: the SRS names it).
    pub device: Option<&'a str>,
    /// Seal the new profile under this passphrase.
    pub passphrase: Option<&'a Passphrase>,
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct Restored {
    /// The new profile.
    pub profile: Profile,
    /// The device name the SRS registered.
    pub device: String,
    /// The new certificate's expiry (Unix seconds).
    pub not_after: i64,
    /// The key epochs the profile starts with.
    pub epochs: BTreeMap<String, u32>,
    /// Partitions whose epoch the mesh showed above the backup's.
    pub raised: Vec<RaisedEpoch>,
    /// Whether the grant ledger came with it (a backup's); without one,
    /// rotations wait for `sesphr grants --adopt`.
    pub ledger: bool,
    /// Whether the backup's mesh CA differs from the mesh file's (the
    /// profile trusts the mesh file's, as an enrolment does).
    pub ca_changed: bool,
}

/// Restores a profile into `home` (new or empty) from a backup or a
/// recovery phrase (see the module docs). Nothing is written to `home`
/// unless everything else succeeded; the SRS has registered a new device
/// for the user by then, which `sesphr device remove` takes away again.
pub async fn restore(
    mesh: &MeshFile,
    home: &Path,
    from: RestoreFrom,
    options: RestoreOptions<'_>,
) -> Result<Restored, ClientError> {
    check_new_home(home)?;
    if let Some(p) = options.passphrase
        && p.is_empty()
    {
        return Err(ClientError::Invalid("a passphrase may not be empty".into()));
    }
    let (master, user_id, role, backup) = match from {
        RestoreFrom::Backup(b) => {
            if b.identity.trust_domain != mesh.trust_domain {
                return Err(ClientError::Config(format!(
                    "the backup is of trust domain {}, the mesh file of {}",
                    b.identity.trust_domain, mesh.trust_domain
                )));
            }
            (
                b.master.clone(),
                b.user_id().to_owned(),
                Some(b.role()),
                Some(b),
            )
        }
        RestoreFrom::Phrase {
            master,
            user_id,
            role,
        } => (master, user_id, role, None),
    };
    sesphr_mesh::tls::install_crypto_provider();
    let ca_pem = std::fs::read_to_string(&mesh.ca).map_err(|e| ClientError::io(&mesh.ca, e))?;
    let issued = crate::admin::obtain_device_certificate(
        mesh,
        &master,
        &user_id,
        role,
        None,
        options.device,
    )
    .await?;
    let identity = issued.identity.clone();
    match identity.as_user() {
        Some((r, id)) if id == user_id && role.is_none_or(|want| want == r) => {}
        _ => {
            return Err(ClientError::Verification(format!(
                "the SRS issued a certificate for {identity}, not for {user_id}{}",
                role.map(|r| format!(" as {r}")).unwrap_or_default()
            )));
        }
    }
    let tls = TlsMaterial::from_pem(
        issued.certificate_pem.clone(),
        issued.tls_key_pem.clone(),
        ca_pem.clone(),
    )?;
    let base = backup
        .as_ref()
        .map(|b| b.epochs.clone())
        .unwrap_or_default();
    let is_patient = identity.as_user().is_some_and(|(r, _)| r == Role::Patient);
    let (epochs, raised) = if is_patient {
        let clients = MeshClients::connect(mesh, &tls)?;
        merge_epochs(&base, &mesh_epochs(&clients, &user_id).await?)
    } else {
        (base, Vec::new())
    };
    let files: Vec<(&str, &str)> = backup
        .as_ref()
        .map(|b| {
            b.files
                .iter()
                .map(|(n, t)| (n.as_str(), t.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let ca_changed = backup
        .as_ref()
        .is_some_and(|b| b.ca_pem.trim() != ca_pem.trim());
    let profile = Profile::create_with(
        home,
        &identity,
        &master,
        &issued.tls_key_pem,
        &issued.certificate_pem,
        &ca_pem,
        NewProfile {
            passphrase: options.passphrase,
            epochs: &epochs,
            files: &files,
        },
    )?;
    Ok(Restored {
        profile,
        device: issued.device.clone(),
        not_after: issued.not_after,
        epochs,
        raised,
        ledger: backup.as_ref().is_some_and(|b| b.has_ledger()),
        ca_changed,
    })
}

/// `home` must hold nothing yet (it may exist, empty).
fn check_new_home(home: &Path) -> Result<(), ClientError> {
    match std::fs::read_dir(home) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ClientError::Profile(format!(
                    "{} is not empty; restore into a new --home",
                    home.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClientError::io(home, e)),
    }
}

/// The highest key epoch per partition the mesh shows for `owner`'s
/// partitions: her records' epochs (CloudStorage's listing) and the epoch
/// ranges of the grants she gave (AccessPolicy's list). A rotation that
/// left neither a record nor a grant behind does not show (see
/// docs/recovery.md, "Backup and restore").
pub async fn mesh_epochs(
    clients: &MeshClients,
    owner: &str,
) -> Result<BTreeMap<String, u32>, ClientError> {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut note = |partition: &str, epoch: u32| {
        let e = seen.entry(partition.to_owned()).or_default();
        *e = (*e).max(epoch);
    };
    for r in bounds::list(clients, owner, None, None).await? {
        note(r.partition.as_ref(), r.epoch);
    }
    let resp = clients
        .policy
        .clone()
        .list_grants(unary(proto::ListGrantsRequest {}))
        .await
        .map_err(rpc("AccessPolicy"))?
        .into_inner();
    for g in Grants::from_proto(resp)?.given {
        if g.owner_id.as_ref() == owner {
            note(
                g.partition.as_ref(),
                g.epoch_max.unwrap_or(g.epoch_min).max(g.epoch_min),
            );
        }
    }
    Ok(seen)
}

/// The larger of both epochs per partition, and where `seen` raised `base`.
fn merge_epochs(
    base: &BTreeMap<String, u32>,
    seen: &BTreeMap<String, u32>,
) -> (BTreeMap<String, u32>, Vec<RaisedEpoch>) {
    let mut out = base.clone();
    let mut raised = Vec::new();
    for (partition, &epoch) in seen {
        let have = base.get(partition).copied().unwrap_or(0);
        if epoch > have {
            out.insert(partition.clone(), epoch);
            raised.push(RaisedEpoch {
                partition: partition.clone(),
                was: have,
                now: epoch,
            });
        }
    }
    (out, raised)
}

/// Raises the profile's key epochs to what the mesh shows
/// ([`mesh_epochs`]) where that is higher, so that new records are never
/// sealed under an epoch a revocation left behind. For a patient's
/// profile after a restore or a recovery; returns the partitions raised.
pub async fn reconcile_epochs(
    mesh: &MeshFile,
    profile: &Profile,
) -> Result<Vec<RaisedEpoch>, ClientError> {
    if profile.role() != Role::Patient {
        return Ok(Vec::new());
    }
    let clients = MeshClients::connect(mesh, &profile.tls()?)?;
    let seen = mesh_epochs(&clients, profile.user_id()).await?;
    let (all, raised) = merge_epochs(&profile.epochs()?, &seen);
    if !raised.is_empty() {
        profile.set_epochs(&all)?;
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phrase_is_24_words_that_give_back_the_master_secret() {
        let master = MasterSecret::generate(&mut rand::rng());
        let phrase = recovery_phrase(&master);
        assert_eq!(phrase.split(' ').count(), PHRASE_WORDS);
        let back = master_from_phrase(&format!("  {}\n", phrase.to_uppercase())).unwrap();
        assert_eq!(back.to_bytes(), master.to_bytes());
    }

    #[test]
    fn a_mistyped_phrase_is_one_line_saying_what_is_wrong() {
        // The BIP-39 test vector of 32 zero bytes: "abandon" x23, "art".
        let zero = MasterSecret::from_bytes(&[0; 32]).unwrap();
        let phrase = recovery_phrase(&zero);
        assert_eq!(phrase.as_str(), format!("{}art", "abandon ".repeat(23)));
        let err = master_from_phrase(&phrase.replace("art", "abandon")).unwrap_err();
        assert!(err.to_string().contains("checksum does not match"), "{err}");
        let err = master_from_phrase(&phrase.replacen("abandon", "abandonn", 1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("word 1 of the recovery phrase (\"abandonn\") is not in the BIP-39"),
            "{err}"
        );
        let err = master_from_phrase(&phrase.replacen("abandon ", "", 1)).unwrap_err();
        assert!(err.to_string().contains("this one has 23"), "{err}");
        let twelve = format!("{}about", "abandon ".repeat(11));
        let err = master_from_phrase(&twelve).unwrap_err();
        assert!(err.to_string().contains("has 24 words"), "{err}");
    }

    #[test]
    fn epochs_merge_to_the_larger_of_each() {
        let base = BTreeMap::from([("medical".to_owned(), 2), ("personal".to_owned(), 1)]);
        let seen = BTreeMap::from([("medical".to_owned(), 1), ("other".to_owned(), 3)]);
        let (all, raised) = merge_epochs(&base, &seen);
        assert_eq!(
            all,
            BTreeMap::from([
                ("medical".to_owned(), 2),
                ("other".to_owned(), 3),
                ("personal".to_owned(), 1)
            ])
        );
        assert_eq!(
            raised,
            vec![RaisedEpoch {
                partition: "other".to_owned(),
                was: 0,
                now: 3
            }]
        );
    }

    #[test]
    fn a_backup_file_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let pass = |s: &str| {
            Passphrase::new(Zeroizing::new(s.to_owned()))
                .with_kdf(crate::sealed::KdfParams::INSECURE_TEST)
        };
        let backup = Backup {
            identity: Identity::user("sesphr.local", Role::Patient, "alice").unwrap(),
            master: MasterSecret::generate(&mut rand::rng()),
            epochs: BTreeMap::from([("medical".to_owned(), 3)]),
            ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            files: BTreeMap::from([("grants.toml".to_owned(), "[medical]\n".to_owned())]),
            created_at: 1_800_000_000,
        };
        let path = dir.path().join("alice.backup");
        backup.write(&path, &pass("pw one"), false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = backup.write(&path, &pass("pw one"), false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        backup.write(&path, &pass("pw one"), true).unwrap();
        let back = Backup::read(&path, &pass("pw one")).unwrap();
        assert_eq!(back.identity, backup.identity);
        assert_eq!(back.master.to_bytes(), backup.master.to_bytes());
        assert_eq!(back.epochs, backup.epochs);
        assert!(back.has_ledger());
        assert!(!format!("{back:?}").contains(&hex::encode(backup.master.to_bytes().as_slice())));

        let err = Backup::read(&path, &pass("pw two")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("wrong passphrase for {}", path.display())
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = Backup::read(&path, &pass("pw one")).unwrap_err();
        assert!(err.to_string().contains("corrupted"), "{err}");
        std::fs::write(&path, b"hello").unwrap();
        let err = Backup::read(&path, &pass("pw one")).unwrap_err();
        assert!(
            err.to_string().contains("not a sesphr backup file"),
            "{err}"
        );
        // Only one file is left in the directory: no temporaries.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

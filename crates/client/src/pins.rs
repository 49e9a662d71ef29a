//! Pinned user keys: trust on first use, like SSH's `known_hosts`, plus
//! explicit verification by fingerprint.
//!
//! The SRS is the mesh's directory: it tells a client which PRE public key
//! and which verifying key belong to a user. A directory that lies could
//! hand a patient's plaintext to whoever it names at grant time, or make a
//! grantee accept records signed by someone else. So the profile remembers
//! (`DIR/known_keys.toml`) every user key it has used; a key that differs
//! from the pinned one is refused until the user confirms the new one out
//! of band (`sesphr trust ID --fingerprint F`). [`fingerprint`] is what two
//! people compare, e.g. read out over the phone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sesphr::proto;
use sesphr_crypto::{PublicKey, VerifyingKey};
use sesphr_identity::Role;
use sha2::{Digest, Sha256};

use crate::ClientError;
use crate::types::role_of;
use sesphr_mesh::pki::write_public;

/// Domain separation of [`fingerprint`].
const FINGERPRINT_DST: &[u8] = b"SESPHR-V1-USER-KEY-FINGERPRINT";

/// A user's keys as the directory (the SRS) presented them, checked for
/// well-formedness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeys {
    /// The user.
    pub user_id: String,
    /// The user's role.
    pub role: Role,
    /// The key re-encrypted capsules are made for.
    pub pre_public_key: PublicKey,
    /// The key that signs the user's kfrags and records.
    pub verifying_key: VerifyingKey,
}

impl UserKeys {
    pub(crate) fn from_proto(u: proto::UserInfo) -> Result<Self, ClientError> {
        let bad = |what: &str| {
            ClientError::Verification(format!(
                "the SRS returned a malformed {what} for {}",
                u.user_id
            ))
        };
        sesphr_identity::validate_user_id(&u.user_id).map_err(|_| bad("user id"))?;
        Ok(Self {
            role: role_of(u.role).ok_or_else(|| bad("role"))?,
            pre_public_key: PublicKey::from_bytes(&u.pre_public_key)
                .map_err(|_| bad("public key"))?,
            verifying_key: VerifyingKey::from_bytes(&u.verifying_key)
                .map_err(|_| bad("verifying key"))?,
            user_id: u.user_id,
        })
    }

    /// The short fingerprint of these keys (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.user_id,
            self.role,
            &self.pre_public_key,
            &self.verifying_key,
        )
    }
}

/// `SHA-256(DST || u16be(len id) || id || role || pre_pk || vk)`, first 16
/// bytes as eight dash-separated groups of four hex digits: 128 bits, short
/// enough to read out, long enough that no one can grind a second key to
/// the same fingerprint.
pub fn fingerprint(user_id: &str, role: Role, pre: &PublicKey, vk: &VerifyingKey) -> String {
    let id = user_id.as_bytes();
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_DST)
        .chain_update((id.len() as u16).to_be_bytes())
        .chain_update(id)
        .chain_update(role.as_str().as_bytes())
        .chain_update([0u8])
        .chain_update(pre.to_bytes())
        .chain_update(vk.to_bytes())
        .finalize();
    digest[..16]
        .chunks(2)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join("-")
}

/// What the pin store says about keys a directory presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinStatus {
    /// The keys are the ones pinned.
    Pinned,
    /// No keys were pinned for this user yet.
    New,
    /// Other keys are pinned for this user: the fingerprint of those.
    Changed {
        /// Fingerprint of the pinned keys.
        pinned: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Pin {
    role: String,
    pre_public_key: String,
    verifying_key: String,
    fingerprint: String,
}

impl Pin {
    fn of(keys: &UserKeys) -> Self {
        Self {
            role: keys.role.as_str().to_owned(),
            pre_public_key: hex::encode(keys.pre_public_key.to_bytes()),
            verifying_key: hex::encode(keys.verifying_key.to_bytes()),
            fingerprint: keys.fingerprint(),
        }
    }
}

/// How `keys` compare with their user's pin in `all`.
fn status_in(all: &BTreeMap<String, Pin>, keys: &UserKeys) -> PinStatus {
    match all.get(&keys.user_id) {
        None => PinStatus::New,
        Some(pin) if *pin == Pin::of(keys) => PinStatus::Pinned,
        Some(pin) => PinStatus::Changed {
            pinned: pin.fingerprint.clone(),
        },
    }
}

/// The profile's pinned keys (`DIR/known_keys.toml`).
#[derive(Debug)]
pub(crate) struct PinStore {
    path: PathBuf,
}

impl PinStore {
    pub(crate) fn new(home: &Path) -> Self {
        Self {
            path: home.join("known_keys.toml"),
        }
    }

    fn load(&self) -> Result<BTreeMap<String, Pin>, ClientError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| ClientError::Profile(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ClientError::io(&self.path, e)),
        }
    }

    fn save(&self, all: &BTreeMap<String, Pin>) -> Result<(), ClientError> {
        let text = toml::to_string(all).expect("pins serialize");
        write_public(&self.path, text.as_bytes())?;
        Ok(())
    }

    /// How `keys` compare with the pin of their user.
    pub(crate) fn status(&self, keys: &UserKeys) -> Result<PinStatus, ClientError> {
        Ok(status_in(&self.load()?, keys))
    }

    /// Accepts `keys` if they are pinned, pins them if their user has no
    /// pin yet (trust on first use), refuses them if other keys are pinned.
    pub(crate) fn check_or_pin(&self, keys: &UserKeys) -> Result<PinStatus, ClientError> {
        let mut all = self.load()?;
        let status = status_in(&all, keys);
        match &status {
            PinStatus::Pinned => {}
            PinStatus::New => {
                all.insert(keys.user_id.clone(), Pin::of(keys));
                self.save(&all)?;
            }
            PinStatus::Changed { pinned } => {
                return Err(ClientError::KeyChanged {
                    user_id: keys.user_id.clone(),
                    pinned: pinned.clone(),
                    presented: keys.fingerprint(),
                });
            }
        }
        Ok(status)
    }

    /// The verifying key pinned for `user_id`, if any.
    pub(crate) fn pinned_verifying_key(
        &self,
        user_id: &str,
    ) -> Result<Option<VerifyingKey>, ClientError> {
        let Some(pin) = self.load()?.remove(user_id) else {
            return Ok(None);
        };
        let bytes = hex::decode(&pin.verifying_key).ok();
        bytes
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .map(Some)
            .ok_or_else(|| {
                ClientError::Profile(format!(
                    "{}: the verifying key pinned for {user_id} is malformed",
                    self.path.display()
                ))
            })
    }

    /// The fingerprint pinned for `user_id`, if any.
    pub(crate) fn pinned_fingerprint(&self, user_id: &str) -> Result<Option<String>, ClientError> {
        Ok(self.load()?.remove(user_id).map(|p| p.fingerprint))
    }

    /// Pins `keys`, replacing any earlier pin of their user.
    pub(crate) fn pin(&self, keys: &UserKeys) -> Result<(), ClientError> {
        let mut all = self.load()?;
        all.insert(keys.user_id.clone(), Pin::of(keys));
        self.save(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesphr_crypto::{MasterSecret, SecretKey};

    fn keys(seed: u8, id: &str) -> UserKeys {
        let master = MasterSecret::from_bytes(&[seed; 32]).unwrap();
        UserKeys {
            user_id: id.into(),
            role: Role::Doctor,
            pre_public_key: SecretKey::generate(&mut rand::rng()).public_key(),
            verifying_key: master.signing_key().verifying_key(),
        }
    }

    #[test]
    fn trust_on_first_use_then_refuse_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = PinStore::new(dir.path());
        let bob = keys(1, "bob");
        assert_eq!(store.check_or_pin(&bob).unwrap(), PinStatus::New);
        assert_eq!(store.check_or_pin(&bob).unwrap(), PinStatus::Pinned);
        let impostor = keys(2, "bob");
        let err = store.check_or_pin(&impostor).unwrap_err();
        assert!(
            matches!(&err, ClientError::KeyChanged { pinned, presented, .. }
                if *pinned == bob.fingerprint() && *presented == impostor.fingerprint()),
            "{err}"
        );
        // Still bob's key; confirming the new one replaces the pin.
        assert_eq!(
            store.pinned_verifying_key("bob").unwrap(),
            Some(bob.verifying_key)
        );
        store.pin(&impostor).unwrap();
        assert_eq!(store.check_or_pin(&impostor).unwrap(), PinStatus::Pinned);
    }

    #[test]
    fn fingerprints_separate_users_roles_and_keys() {
        let a = keys(1, "bob");
        let fp = a.fingerprint();
        assert_eq!(fp.len(), 39, "{fp}");
        assert_eq!(fp.matches('-').count(), 7);
        let mut other_role = a.clone();
        other_role.role = Role::Insurer;
        let mut other_id = a.clone();
        other_id.user_id = "bob2".into();
        for b in [other_role, other_id, keys(3, "bob")] {
            assert_ne!(b.fingerprint(), fp);
        }
    }
}

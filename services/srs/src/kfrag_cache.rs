//! Kfrags the SRS has already verified, so `ReEncrypt` does not check the
//! owner's signature on every stored kfrag again on every call (a kfrag
//! check costs about half a re-encryption).
//!
//! An entry is keyed by every byte its verification depended on: the stored
//! kfrag bytes, the delegating key, the owner's verifying key and the
//! grantee's receiving key. A set that changed in any way — replaced by a
//! new grant, rotated, or altered on disk — is a miss and is verified
//! afresh, so a tampered database stays harmless; a deleted set is never
//! looked up (`ReEncrypt` reads the store first). Memory is bounded: when
//! the cache is full it starts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sesphr_crypto as crypto;
use sesphr_domain::DomainError;

/// Entries kept at most (one per (owner, partition, epoch, grantee) in use).
pub const DEFAULT_CAPACITY: usize = 4096;

pub struct VerifiedKfrags {
    capacity: usize,
    map: Mutex<HashMap<Vec<u8>, Arc<[crypto::VerifiedKeyFrag]>>>,
}

impl VerifiedKfrags {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The verified kfrags of a stored set; `Corrupt` if one does not
    /// verify (the store was tampered with: it verified when it was put).
    pub fn get_or_verify(
        &self,
        kfrags: &[Vec<u8>],
        delegating: &[u8],
        verifying: &[u8],
        receiving: &[u8],
    ) -> Result<Arc<[crypto::VerifiedKeyFrag]>, DomainError> {
        let mut key = Vec::new();
        for part in kfrags
            .iter()
            .map(Vec::as_slice)
            .chain([delegating, verifying, receiving])
        {
            key.extend_from_slice(&(part.len() as u32).to_be_bytes());
            key.extend_from_slice(part);
        }
        key.extend_from_slice(&(kfrags.len() as u32).to_be_bytes());
        let lock = || self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = lock().get(&key) {
            return Ok(hit.clone());
        }
        let corrupt = || DomainError::Corrupt("a stored kfrag does not verify".into());
        let verifying = crypto::VerifyingKey::from_bytes(verifying).map_err(|_| corrupt())?;
        let delegating = crypto::PublicKey::from_bytes(delegating).map_err(|_| corrupt())?;
        let receiving = crypto::PublicKey::from_bytes(receiving).map_err(|_| corrupt())?;
        let verified: Arc<[_]> = kfrags
            .iter()
            .map(|k| {
                crypto::KeyFrag::from_bytes(k)
                    .and_then(|k| k.verify(&verifying, &delegating, &receiving))
                    .map_err(|_| corrupt())
            })
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let mut map = lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, verified.clone());
        Ok(verified)
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_once_and_misses_on_any_change() {
        let mut rng = rand::rng();
        let master = crypto::MasterSecret::generate(&mut rng);
        let (sk, pk) = master.partition_keys("medical", 0).unwrap();
        let signer = master.signing_key();
        let grantee = crypto::SecretKey::generate(&mut rng).public_key();
        let kfrags = crypto::generate_kfrags(&mut rng, &sk, &grantee, &signer, 1, 1).unwrap();
        let bytes = vec![kfrags[0].to_bytes().to_vec()];
        let (d, v, r) = (
            pk.to_bytes().to_vec(),
            signer.verifying_key().to_bytes().to_vec(),
            grantee.to_bytes().to_vec(),
        );
        let cache = VerifiedKfrags::new(2);
        let a = cache.get_or_verify(&bytes, &d, &v, &r).unwrap();
        let b = cache.get_or_verify(&bytes, &d, &v, &r).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second lookup is a hit");
        assert_eq!(cache.len(), 1);
        // Another receiving key: a miss, and the kfrag does not verify.
        let other = crypto::SecretKey::generate(&mut rng).public_key();
        let err = cache
            .get_or_verify(&bytes, &d, &v, &other.to_bytes())
            .unwrap_err();
        assert!(matches!(err, DomainError::Corrupt(_)), "{err:?}");
        // A flipped byte in the stored kfrag: a miss, refused.
        let mut bad = bytes.clone();
        let last = bad[0].len() - 1;
        bad[0][last] ^= 1;
        assert!(cache.get_or_verify(&bad, &d, &v, &r).is_err());
        assert_eq!(cache.len(), 1, "failures are not cached");
    }
}

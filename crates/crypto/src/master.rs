//! The patient's master secret and the keys derived from it.

use core::fmt;

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::arith;
use crate::dst;
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey, SigningKey};

/// Longest partition name, in bytes of UTF-8.
pub const MAX_PARTITION_LEN: usize = 255;

/// The one 32-byte secret a patient backs up. Every partition key pair and
/// the kfrag-signing key are derived from it (HKDF-SHA256), so nothing else
/// needs a backup.
///
/// Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct MasterSecret([u8; MasterSecret::LEN]);

impl MasterSecret {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// 32 fresh random bytes.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut bytes = [0u8; Self::LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps a backed-up master secret (exactly 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; Self::LEN] = bytes
            .try_into()
            .map_err(|_| Error::Malformed("master secret"))?;
        Ok(Self(arr))
    }

    /// The raw secret, for backup.
    pub fn to_bytes(&self) -> Zeroizing<[u8; Self::LEN]> {
        Zeroizing::new(self.0)
    }

    /// HKDF-SHA256 of the master secret into a scalar; the caller zeroizes
    /// the result. The PRK and the output keying material are zeroized.
    /// (The HMAC state keyed with the PRK inside `hkdf::Hkdf` is not: that
    /// needs `hmac`'s `zeroize` feature.)
    fn expand_scalar(&self, info: &[&[u8]]) -> Zeroizing<p256::Scalar> {
        let (mut prk, hk) = Hkdf::<Sha256>::extract(Some(dst::MASTER_SALT), &self.0);
        prk.zeroize();
        let mut okm = Zeroizing::new([0u8; 48]);
        hk.expand_multi_info(info, &mut okm[..])
            .expect("48 bytes is a valid HKDF-SHA256 output length");
        Zeroizing::new(arith::scalar_from_okm(&okm))
    }

    /// The PRE key pair of `(partition, epoch)`.
    ///
    /// `info = PARTITION_KEY_INFO || u16be(len(partition)) || partition || u32be(epoch)`;
    /// `partition` is 1..=255 bytes of UTF-8.
    pub fn partition_keys(&self, partition: &str, epoch: u32) -> Result<(SecretKey, PublicKey)> {
        let name = validate_partition(partition)?;
        let len = u16::try_from(name.len())
            .expect("validated length fits in u16")
            .to_be_bytes();
        let s = self.expand_scalar(&[dst::PARTITION_KEY_INFO, &len, name, &epoch.to_be_bytes()]);
        let sk = SecretKey::from_scalar(*s);
        let pk = sk.public_key();
        Ok((sk, pk))
    }

    /// The owner's kfrag-signing key (`info = SIGNING_KEY_INFO`).
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_scalar(*self.expand_scalar(&[dst::SIGNING_KEY_INFO]))
    }
}

/// Checks a partition name (1..=255 bytes) and returns its bytes.
pub(crate) fn validate_partition(partition: &str) -> Result<&[u8]> {
    let bytes = partition.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PARTITION_LEN {
        return Err(Error::InvalidParameter(
            "partition name must be 1..=255 bytes",
        ));
    }
    Ok(bytes)
}

impl Drop for MasterSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for MasterSecret {}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

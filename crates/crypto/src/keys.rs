//! PRE key pairs and the kfrag signing key pair.

use core::fmt;

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::elliptic_curve::{Field, ops::Reduce, subtle::ConstantTimeEq};
use p256::{FieldBytes, Scalar};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::arith::{self, POINT_LEN, Point, SCALAR_LEN};
use crate::ec::{self, Affine};
use crate::error::{Error, Result};

/// A PRE secret key: a non-zero scalar `a` modulo the P-256 order.
///
/// Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) scalar: Scalar,
    /// `a * G`, computed once when the key is created or decoded.
    public: PublicKey,
}

impl SecretKey {
    /// Length of [`SecretKey::to_bytes`].
    pub const LEN: usize = SCALAR_LEN;

    /// A fresh random secret key.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        Self::from_scalar(arith::random_nonzero_scalar(rng))
    }

    pub(crate) fn from_scalar(scalar: Scalar) -> Self {
        debug_assert!(!bool::from(scalar.is_zero()));
        let p = arith::mul_g(&scalar);
        let public = PublicKey {
            point: Point::from_jacobian(&p).expect("non-zero scalar times G is not the identity"),
        };
        Self { scalar, public }
    }

    /// The matching public key `a * G`.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Big-endian 32-byte encoding. Handle with care.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        Zeroizing::new(arith::scalar_to_bytes(&self.scalar))
    }

    /// Decodes a canonical, non-zero 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self::from_scalar(arith::nonzero_scalar_from_bytes(
            bytes,
            "secret key",
        )?))
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.scalar.zeroize();
    }
}

impl ZeroizeOnDrop for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.scalar.ct_eq(&other.scalar).into()
    }
}

impl Eq for SecretKey {}

/// A PRE public key: a point `A = a * G`, encoded as SEC1 compressed (33 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    pub(crate) point: Point,
}

impl PublicKey {
    /// Length of [`PublicKey::to_bytes`].
    pub const LEN: usize = POINT_LEN;

    /// SEC1 compressed encoding.
    pub fn to_bytes(&self) -> [u8; POINT_LEN] {
        self.point.bytes
    }

    /// Decodes a SEC1 compressed point; rejects the identity and invalid points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            point: Point::from_bytes(bytes, "public key")?,
        })
    }

    pub(crate) fn affine(&self) -> &Affine {
        &self.point.affine
    }
}

impl core::hash::Hash for Point {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", self.point)
    }
}

/// Length of an encoded ECDSA signature: `r || s`, 32 bytes each, big-endian.
pub const SIGNATURE_LEN: usize = 64;

/// The key with which a data owner signs the kfrags it issues
/// (ECDSA P-256 with SHA-256, deterministic nonces per RFC 6979).
///
/// Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
}

impl SigningKey {
    /// Length of [`SigningKey::to_bytes`].
    pub const LEN: usize = SCALAR_LEN;

    /// A fresh random signing key.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        Self::from_scalar(arith::random_nonzero_scalar(rng))
    }

    pub(crate) fn from_scalar(mut scalar: Scalar) -> Self {
        let mut bytes = arith::scalar_to_bytes(&scalar);
        let inner = p256::ecdsa::SigningKey::from_slice(&bytes)
            .expect("non-zero canonical scalar is a valid signing key");
        bytes.zeroize();
        scalar.zeroize();
        Self { inner }
    }

    /// Decodes a canonical, non-zero 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let s = arith::nonzero_scalar_from_bytes(bytes, "signing key")?;
        Ok(Self::from_scalar(s))
    }

    /// Big-endian 32-byte encoding. Handle with care.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        let mut out = [0u8; SCALAR_LEN];
        out.copy_from_slice(&self.inner.to_bytes());
        Zeroizing::new(out)
    }

    /// The public half, given to proxies and grantees.
    pub fn verifying_key(&self) -> VerifyingKey {
        let affine = Affine::from_p256(self.inner.verifying_key().as_affine())
            .expect("verifying key is not the identity");
        VerifyingKey {
            point: Point::from_affine(affine),
        }
    }

    /// Signs `message` (SHA-256 is applied inside), returning the low-s
    /// normalised signature as `r || s`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let sig: p256::ecdsa::Signature = self.inner.sign(message);
        Self::canonical(sig)
    }

    /// Signs a message of which the caller computed the SHA-256 digest
    /// (so that a long message need not be copied into one buffer).
    /// `sign(m) == sign_prehashed(SHA-256(m))`.
    pub(crate) fn sign_prehashed(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        let sig: p256::ecdsa::Signature = self
            .inner
            .sign_prehash(digest)
            .expect("a 32-byte prehash is always signable");
        Self::canonical(sig)
    }

    fn canonical(sig: p256::ecdsa::Signature) -> [u8; SIGNATURE_LEN] {
        let sig = sig.normalize_s();
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&sig.to_bytes());
        out
    }
}

impl ZeroizeOnDrop for SigningKey {}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Public key verifying kfrag signatures, SEC1 compressed (33 bytes).
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    point: Point,
}

impl VerifyingKey {
    /// Length of [`VerifyingKey::to_bytes`].
    pub const LEN: usize = POINT_LEN;

    /// SEC1 compressed encoding.
    pub fn to_bytes(&self) -> [u8; POINT_LEN] {
        self.point.bytes
    }

    /// Decodes a SEC1 compressed point; rejects the identity and invalid points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            point: Point::from_bytes(bytes, "verifying key")?,
        })
    }

    /// ECDSA verification (FIPS 186-5, SHA-256) of a decoded signature
    /// (`0 < r, s < n`, low s: checked when decoding). Everything here is
    /// public, so it runs in variable time on this crate's fast
    /// multi-scalar multiplication.
    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        self.verify_prehashed(&Sha256::digest(message).into(), signature)
    }

    /// [`verify`](Self::verify) of a message whose SHA-256 digest the
    /// caller computed.
    pub(crate) fn verify_prehashed(&self, digest: &[u8; 32], signature: &Signature) -> Result<()> {
        let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*digest));
        let (r, s) = (signature.r(), signature.s());
        let w: Option<Scalar> = s.invert_vartime().into();
        let w = w.ok_or(Error::VerificationFailed)?;
        let u1 = e * w;
        let u2 = r * w;
        let point = arith::mul_g_vartime(&u1)
            .add_vartime(&ec::lincomb_vartime(&[self.point.affine], &[u2]));
        let point = point.to_affine().ok_or(Error::VerificationFailed)?;
        let x = <Scalar as Reduce<FieldBytes>>::reduce(&point.x_bytes());
        if x == r {
            Ok(())
        } else {
            Err(Error::VerificationFailed)
        }
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl Eq for VerifyingKey {}

impl core::hash::Hash for VerifyingKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.point.bytes.hash(state);
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({:?})", self.point)
    }
}

/// A decoded, structurally valid (low-s, `0 < r, s < n`) ECDSA signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signature(
    pub(crate) p256::ecdsa::Signature,
    pub(crate) [u8; SIGNATURE_LEN],
);

impl Signature {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| Error::Malformed("signature"))?;
        let sig =
            p256::ecdsa::Signature::from_slice(&arr).map_err(|_| Error::Malformed("signature"))?;
        // Only the low-s form is canonical.
        if sig.normalize_s() != sig {
            return Err(Error::Malformed("signature"));
        }
        Ok(Self(sig, arr))
    }

    pub(crate) fn from_array(arr: [u8; SIGNATURE_LEN]) -> Self {
        Self::from_bytes(&arr).expect("freshly produced signature is canonical")
    }

    fn r(&self) -> Scalar {
        *self.0.r().as_ref()
    }

    fn s(&self) -> Scalar {
        *self.0.s().as_ref()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&arith::hex_string(&self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    /// The in-crate ECDSA verification agrees with `p256`'s.
    #[test]
    fn ecdsa_verification_matches_p256() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for i in 0..40 {
            let sk = SigningKey::generate(&mut rng);
            let vk = sk.verifying_key();
            let reference = p256::ecdsa::VerifyingKey::from_sec1_bytes(&vk.to_bytes()).unwrap();
            let mut msg = vec![0u8; i * 7];
            rng.fill_bytes(&mut msg);
            let sig_bytes = sk.sign(&msg);
            let sig = Signature::from_bytes(&sig_bytes).unwrap();
            assert!(vk.verify(&msg, &sig).is_ok());
            assert!(reference.verify(&msg, &sig.0).is_ok());
            // Deterministic (RFC 6979) and low-s.
            assert_eq!(sk.sign(&msg), sig_bytes);
            // Wrong message, wrong key.
            let mut other = msg.clone();
            other.push(1);
            assert!(vk.verify(&other, &sig).is_err());
            let vk2 = SigningKey::generate(&mut rng).verifying_key();
            assert!(vk2.verify(&msg, &sig).is_err());
            // Random (structurally valid) signatures: both reject.
            let mut random = [0u8; SIGNATURE_LEN];
            rng.fill_bytes(&mut random);
            random[0] &= 0x7f;
            random[32] &= 0x7f;
            if let Ok(s) = Signature::from_bytes(&random) {
                assert!(vk.verify(&msg, &s).is_err());
                assert!(reference.verify(&msg, &s.0).is_err());
            }
        }
    }
}

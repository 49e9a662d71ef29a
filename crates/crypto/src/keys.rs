//! PRE key pairs and the kfrag signing key pair.

use core::fmt;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::elliptic_curve::{Field, subtle::ConstantTimeEq};
use p256::{ProjectivePoint, Scalar};
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::arith::{self, POINT_LEN, Point, SCALAR_LEN};
use crate::error::{Error, Result};

/// A PRE secret key: a non-zero scalar `a` modulo the P-256 order.
///
/// Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) scalar: Scalar,
}

impl SecretKey {
    /// Length of [`SecretKey::to_bytes`].
    pub const LEN: usize = SCALAR_LEN;

    /// A fresh random secret key.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        Self {
            scalar: arith::random_nonzero_scalar(rng),
        }
    }

    pub(crate) fn from_scalar(scalar: Scalar) -> Self {
        debug_assert!(!bool::from(scalar.is_zero()));
        Self { scalar }
    }

    /// The matching public key `a * G`.
    pub fn public_key(&self) -> PublicKey {
        let p = arith::mul_g(&self.scalar);
        PublicKey {
            point: Point::from_projective(&p).expect("non-zero scalar times G is not the identity"),
        }
    }

    /// Big-endian 32-byte encoding. Handle with care.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        Zeroizing::new(arith::scalar_to_bytes(&self.scalar))
    }

    /// Decodes a canonical, non-zero 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            scalar: arith::nonzero_scalar_from_bytes(bytes, "secret key")?,
        })
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

    pub(crate) fn proj(&self) -> ProjectivePoint {
        self.point.proj()
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
        let affine = *self.inner.verifying_key().as_affine();
        VerifyingKey {
            inner: *self.inner.verifying_key(),
            point: Point::from_affine(affine).expect("verifying key is not the identity"),
        }
    }

    /// Signs `message` (SHA-256 is applied inside), returning the low-s
    /// normalised signature as `r || s`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let sig: p256::ecdsa::Signature = self.inner.sign(message);
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
    inner: p256::ecdsa::VerifyingKey,
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
        let point = Point::from_bytes(bytes, "verifying key")?;
        let inner = p256::ecdsa::VerifyingKey::from_affine(point.affine)
            .map_err(|_| Error::Malformed("verifying key"))?;
        Ok(Self { inner, point })
    }

    /// Verifies a 64-byte `r || s` signature over `message`. High-s
    /// signatures are rejected so that every signature has one encoding.
    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        self.inner
            .verify(message, &signature.0)
            .map_err(|_| Error::VerificationFailed)
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
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&arith::hex_string(&self.1))
    }
}

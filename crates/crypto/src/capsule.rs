//! Key encapsulation: capsules and KEM keys.

use core::fmt;

use hkdf::Hkdf;
use p256::Scalar;
use p256::elliptic_curve::{Field, subtle::ConstantTimeEq};
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::arith::{self, POINT_LEN, Point, SCALAR_LEN, SecretPoint};
use crate::dst;
use crate::ec;
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey};

/// The KEM ciphertext: `E = r G`, `V = u G` and `s = u + r * H(E, V)`.
///
/// Every `Capsule` value is valid (`s G = V + H(E, V) E`): the decoder checks
/// it, which is what lets a proxy re-encrypt it safely.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Capsule {
    pub(crate) e: Point,
    pub(crate) v: Point,
    pub(crate) s: Scalar,
}

impl Capsule {
    /// Length of [`Capsule::to_bytes`]: `E (33) || V (33) || s (32)`.
    pub const LEN: usize = 2 * POINT_LEN + SCALAR_LEN;

    /// `E || V || s`.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..POINT_LEN].copy_from_slice(&self.e.bytes);
        out[POINT_LEN..2 * POINT_LEN].copy_from_slice(&self.v.bytes);
        out[2 * POINT_LEN..].copy_from_slice(&arith::scalar_to_bytes(&self.s));
        out
    }

    /// Decodes and validates a capsule.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != Self::LEN {
            return Err(Error::Malformed("capsule"));
        }
        let e = Point::from_bytes(&bytes[..POINT_LEN], "capsule")?;
        let v = Point::from_bytes(&bytes[POINT_LEN..2 * POINT_LEN], "capsule")?;
        let s = arith::scalar_from_bytes(&bytes[2 * POINT_LEN..], "capsule")?;
        let capsule = Self { e, v, s };
        if !capsule.is_valid() {
            return Err(Error::Malformed("capsule"));
        }
        Ok(capsule)
    }

    /// The capsule challenge `h = H2S(CAPSULE_DST, E || V)`.
    pub(crate) fn challenge(&self) -> Scalar {
        arith::hash_to_scalar(dst::CAPSULE_DST, &[&self.e.bytes, &self.v.bytes])
    }

    /// `s G == V + h E` (all public: variable time).
    fn is_valid(&self) -> bool {
        let h = self.challenge();
        let lhs = arith::mul_g_vartime(&self.s)
            .add_vartime(&ec::lincomb_vartime(&[self.e.affine], &[-h]));
        bool::from(lhs.ct_eq(&self.v.jac()))
    }
}

impl fmt::Debug for Capsule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capsule")
            .field("e", &self.e)
            .field("v", &self.v)
            .field("s", &arith::hex_string(&arith::scalar_to_bytes(&self.s)))
            .finish()
    }
}

/// The 32-byte symmetric key produced by encapsulation and recovered by
/// decapsulation. Zeroized on drop; `Debug` is redacted; equality is
/// constant-time.
#[derive(Clone)]
pub struct KemKey([u8; KemKey::LEN]);

impl KemKey {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// A copy of the raw key bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; Self::LEN]> {
        Zeroizing::new(self.0)
    }

    /// Wraps 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; Self::LEN] = bytes.try_into().map_err(|_| Error::Malformed("KEM key"))?;
        Ok(Self(arr))
    }

    /// `HKDF-SHA256(salt = "", IKM = SEC1c(K), info = KEM_KEY_INFO || capsule)`.
    ///
    /// The PRK is zeroized. (The HMAC state keyed with it inside
    /// `hkdf::Hkdf` is not: that needs `hmac`'s `zeroize` feature.)
    pub(crate) fn derive(shared: &SecretPoint, capsule: &Capsule) -> Self {
        let (mut prk, hk) = Hkdf::<Sha256>::extract(None, &shared.bytes);
        prk.zeroize();
        let mut okm = Self([0u8; Self::LEN]);
        hk.expand_multi_info(&[dst::KEM_KEY_INFO, &capsule.to_bytes()], &mut okm.0)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

impl Drop for KemKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for KemKey {}

impl PartialEq for KemKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for KemKey {}

impl fmt::Debug for KemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KemKey(<redacted>)")
    }
}

/// Generates a fresh symmetric key for `owner_pk` and the capsule that
/// carries it.
pub fn encapsulate(rng: &mut (impl CryptoRng + ?Sized), owner_pk: &PublicKey) -> (Capsule, KemKey) {
    let mut r = arith::random_nonzero_scalar(rng);
    let mut u = arith::random_nonzero_scalar(rng);
    // r + u = 0 would give K = identity (probability 2^-256).
    while bool::from((r + u).is_zero()) {
        u = arith::random_nonzero_scalar(rng);
    }
    let out = encapsulate_with(&r, &u, owner_pk);
    r.zeroize();
    u.zeroize();
    out
}

/// Deterministic core of [`encapsulate`] (used by the test vectors).
pub(crate) fn encapsulate_with(r: &Scalar, u: &Scalar, owner_pk: &PublicKey) -> (Capsule, KemKey) {
    let e = arith::mul_g(r);
    let v = arith::mul_g(u);
    let ru = Zeroizing::new(*r + u);
    let shared = Zeroizing::new(ec::mul_ct(owner_pk.affine(), &ru));
    let jac = Zeroizing::new([e, v, *shared]);
    let mut points = Zeroizing::new(
        Point::batch_from_jacobian(&jac)
            .expect("non-zero multiples of a prime-order point are not the identity"),
    );
    let shared = SecretPoint::take(&mut points[2]);
    let [e, v, _] = *points;
    let h = arith::hash_to_scalar(dst::CAPSULE_DST, &[&e.bytes, &v.bytes]);
    let s = *u + *r * h;
    let capsule = Capsule { e, v, s };
    let key = KemKey::derive(&shared, &capsule);
    (capsule, key)
}

/// Recovers the KEM key with the owner's secret key: `K = a (E + V)`.
pub fn decapsulate_original(owner_sk: &SecretKey, capsule: &Capsule) -> Result<KemKey> {
    let sum = capsule.e.jac().add_affine_vartime(&capsule.v.affine);
    let sum = sum.to_affine().ok_or(Error::DecryptionFailed)?;
    let k = Zeroizing::new(ec::mul_ct(&sum, &owner_sk.scalar));
    let shared = SecretPoint::from_jacobian(&k).ok_or(Error::DecryptionFailed)?;
    Ok(KemKey::derive(&shared, capsule))
}

//! Curve plumbing on NIST P-256: canonical encodings, hashing to scalars and
//! to the curve, random scalars, the second generator `U` and fast
//! fixed-base multiplication for `G` and `U`.
//!
//! Timing rules: every function whose name does not end in `_vartime` runs in
//! time independent of its scalar inputs. `_vartime` functions are only ever
//! called on public scalars (challenges, signature values, verification
//! equations).

use std::sync::LazyLock;

use hash2curve::ExpandMsgXmd;
use p256::elliptic_curve::{
    Field, PrimeField,
    array::{Array, typenum::U48},
    bigint::{NonZero, U256, U384},
    group::GroupEncoding,
    ops::Reduce,
};
use p256::{AffinePoint, FieldBytes, NistP256, Scalar};
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::dst;
use crate::ec::{self, Affine, FixedBaseTable, Jacobian};
use crate::error::{Error, Result};

/// Length of a SEC1 compressed point.
pub const POINT_LEN: usize = 33;
/// Length of a big-endian scalar.
pub const SCALAR_LEN: usize = 32;

/// A non-identity curve point together with its SEC1 compressed encoding,
/// so that hashing and serialising never recompute the (costly) affine form.
///
/// `Copy`, for public points; a secret point is a [`SecretPoint`].
#[derive(Clone, Copy, PartialEq, Eq, Zeroize)]
pub(crate) struct Point {
    pub(crate) affine: Affine,
    pub(crate) bytes: [u8; POINT_LEN],
}

impl Point {
    pub(crate) fn from_affine(affine: Affine) -> Self {
        Self {
            affine,
            bytes: affine.to_compressed(),
        }
    }

    /// `None` for the identity, which has no 33-byte encoding.
    pub(crate) fn from_jacobian(p: &Jacobian) -> Option<Self> {
        p.to_affine().map(Self::from_affine)
    }

    /// Normalises several points with a single field inversion; `None` if
    /// any is the identity.
    ///
    /// The intermediate affine forms are zeroized; if some of `points` are
    /// secret, the caller wraps the result in `Zeroizing` and moves the
    /// secret ones out with [`SecretPoint::take`].
    pub(crate) fn batch_from_jacobian<const N: usize>(points: &[Jacobian; N]) -> Option<[Self; N]> {
        let affine = Zeroizing::new(ec::batch_to_affine(points));
        let mut out = [Self::from_affine(Affine::default()); N];
        for (slot, a) in out.iter_mut().zip(affine.iter()) {
            *slot = Self::from_affine((*a)?);
        }
        Some(out)
    }

    /// Decodes a SEC1 compressed point (tag `0x02`/`0x03`, x < p, on the
    /// curve). The identity cannot be encoded in 33 bytes and is rejected.
    pub(crate) fn from_bytes(bytes: &[u8], what: &'static str) -> Result<Self> {
        let arr: [u8; POINT_LEN] = bytes.try_into().map_err(|_| Error::Malformed(what))?;
        if arr[0] != 0x02 && arr[0] != 0x03 {
            return Err(Error::Malformed(what));
        }
        let repr = Array::from(arr);
        let p256_point: Option<AffinePoint> = AffinePoint::from_bytes(&repr).into();
        let affine = p256_point
            .and_then(|p| Affine::from_p256(&p))
            .ok_or(Error::Malformed(what))?;
        let point = Self::from_affine(affine);
        // Canonical: re-encoding must give the same bytes.
        if point.bytes != arr {
            return Err(Error::Malformed(what));
        }
        Ok(point)
    }

    pub(crate) fn jac(&self) -> Jacobian {
        Jacobian::from(self.affine)
    }
}

/// A secret point (a Diffie-Hellman value, the KEM point `K`, or `W`):
/// not `Copy`, so it is never duplicated implicitly, and zeroized
/// (coordinates and encoding) on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct SecretPoint(Point);

impl SecretPoint {
    /// `None` for the identity.
    pub(crate) fn from_jacobian(p: &Jacobian) -> Option<Self> {
        Point::from_jacobian(p).map(Self)
    }

    /// Moves a secret point out of `slot`, zeroizing the slot.
    pub(crate) fn take(slot: &mut Point) -> Self {
        let out = Self(*slot);
        slot.zeroize();
        out
    }
}

impl core::ops::Deref for SecretPoint {
    type Target = Point;

    fn deref(&self) -> &Point {
        &self.0
    }
}

impl core::fmt::Debug for SecretPoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretPoint(<redacted>)")
    }
}

impl core::fmt::Debug for Point {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", hex_string(&self.bytes))
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Decodes a canonical big-endian scalar (`< n`).
pub(crate) fn scalar_from_bytes(bytes: &[u8], what: &'static str) -> Result<Scalar> {
    let arr: [u8; SCALAR_LEN] = bytes.try_into().map_err(|_| Error::Malformed(what))?;
    let s: Option<Scalar> = Scalar::from_repr(FieldBytes::from(arr)).into();
    s.ok_or(Error::Malformed(what))
}

/// Decodes a canonical, non-zero big-endian scalar (`1 <= s < n`).
pub(crate) fn nonzero_scalar_from_bytes(bytes: &[u8], what: &'static str) -> Result<Scalar> {
    let s = scalar_from_bytes(bytes, what)?;
    if bool::from(s.is_zero()) {
        return Err(Error::Malformed(what));
    }
    Ok(s)
}

pub(crate) fn scalar_to_bytes(s: &Scalar) -> [u8; SCALAR_LEN] {
    s.to_repr().into()
}

/// A uniformly random non-zero P-256 scalar: 64 random bytes reduced mod n
/// (bias < 2^-256), resampled if zero (probability ~2^-256). Public so
/// that every SeSPHR crate draws its secret scalars the same way.
pub fn random_nonzero_scalar(rng: &mut (impl CryptoRng + ?Sized)) -> Scalar {
    use p256::elliptic_curve::ff::FromUniformBytes;
    loop {
        let mut wide = [0u8; 64];
        rng.fill_bytes(&mut wide);
        let s = Scalar::from_uniform_bytes(&wide);
        wide.zeroize();
        if !bool::from(s.is_zero()) {
            return s;
        }
    }
}

/// RFC 9380 `hash_to_field` into the scalar field of P-256:
/// `OS2IP(expand_message_xmd(msg, dst, 48)) mod n`, SHA-256, where `msg` is
/// the concatenation of `parts`.
pub(crate) fn hash_to_scalar(dst: &[u8], parts: &[&[u8]]) -> Scalar {
    hash2curve::hash_to_scalar::<NistP256, ExpandMsgXmd<Sha256>, U48>(parts, &[dst])
        .expect("DST is shorter than 256 bytes and 48 output bytes are allowed")
}

/// Derives a non-zero scalar from 48 uniformly random bytes as in
/// FIPS 186-5 A.2.1 ("extra random bits"): `OS2IP(bytes) mod (n - 1) + 1`.
pub(crate) fn scalar_from_okm(okm: &[u8; 48]) -> Scalar {
    let wide = Zeroizing::new(U384::from_be_slice(okm));
    let n_minus_1 = NistP256::ORDER_MINUS_ONE;
    let modulus = NonZero::new(n_minus_1.resize::<{ U384::LIMBS }>()).expect("n - 1 is not zero");
    let rem = Zeroizing::new(wide.rem(&modulus));
    let reduced: Zeroizing<U256> = Zeroizing::new(rem.resize::<{ U256::LIMBS }>());
    let s = Zeroizing::new(<Scalar as Reduce<U256>>::reduce(&reduced));
    *s + Scalar::ONE
}

trait OrderMinusOne {
    const ORDER_MINUS_ONE: U256;
}

impl OrderMinusOne for NistP256 {
    const ORDER_MINUS_ONE: U256 =
        U256::from_be_hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550");
}

/// The second generator `U`: RFC 9380 `hash_to_curve` (P256_XMD:SHA-256_SSWU_RO_)
/// of [`dst::GENERATOR_U_MSG`] under [`dst::GENERATOR_U_DST`]. Nobody knows
/// `log_G(U)`.
pub(crate) fn generator_u() -> &'static Point {
    static U: LazyLock<Point> = LazyLock::new(|| {
        let p = hash2curve::hash_from_bytes::<NistP256, ExpandMsgXmd<Sha256>>(
            &[dst::GENERATOR_U_MSG],
            &[dst::GENERATOR_U_DST],
        )
        .expect("valid DST");
        let affine =
            Affine::from_p256(&p.to_affine()).expect("hash_to_curve output is not the identity");
        Point::from_affine(affine)
    });
    &U
}

fn g_table() -> &'static FixedBaseTable {
    static T: LazyLock<FixedBaseTable> =
        LazyLock::new(|| FixedBaseTable::new(&Affine::generator()));
    &T
}

fn u_table() -> &'static FixedBaseTable {
    static T: LazyLock<FixedBaseTable> =
        LazyLock::new(|| FixedBaseTable::new(&generator_u().affine));
    &T
}

/// Constant-time `k * G`.
pub(crate) fn mul_g(k: &Scalar) -> Jacobian {
    g_table().mul_ct(k)
}

/// Variable-time `k * G` (public `k` only).
pub(crate) fn mul_g_vartime(k: &Scalar) -> Jacobian {
    g_table().mul_vartime(k)
}

/// Constant-time `k * U`.
pub(crate) fn mul_u(k: &Scalar) -> Jacobian {
    u_table().mul_ct(k)
}

/// Variable-time `k * U` (public `k` only).
pub(crate) fn mul_u_vartime(k: &Scalar) -> Jacobian {
    u_table().mul_vartime(k)
}

/// Computes the lazily built fixed-base tables for `G` and `U` now (about a
/// millisecond), e.g. before timing or serving requests.
pub fn warm_up() {
    let _ = g_table();
    let _ = u_table();
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ProjectivePoint;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn p256_of(j: &Jacobian) -> ProjectivePoint {
        match Point::from_jacobian(j) {
            None => ProjectivePoint::IDENTITY,
            Some(p) => {
                let a: Option<AffinePoint> = AffinePoint::from_bytes(&p.bytes.into()).into();
                ProjectivePoint::from(a.unwrap())
            }
        }
    }

    #[test]
    fn fixed_base_matches_generic() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let u = p256_of(&generator_u().jac());
        let mut edge = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(31u64),
            Scalar::from(32u64),
            Scalar::from(33u64),
            -Scalar::from(32u64),
        ];
        for _ in 0..20 {
            edge.push(random_nonzero_scalar(&mut rng));
        }
        for k in edge {
            assert_eq!(p256_of(&mul_g(&k)), ProjectivePoint::GENERATOR * k);
            assert_eq!(p256_of(&mul_g_vartime(&k)), ProjectivePoint::GENERATOR * k);
            assert_eq!(p256_of(&mul_u(&k)), u * k);
            assert_eq!(p256_of(&mul_u_vartime(&k)), u * k);
        }
    }

    fn assert_zeroize_on_drop<T: ZeroizeOnDrop>() {}

    #[test]
    fn secret_types_zeroize_on_drop() {
        assert_zeroize_on_drop::<SecretPoint>();
        assert_zeroize_on_drop::<crate::SecretKey>();
        assert_zeroize_on_drop::<crate::SigningKey>();
        assert_zeroize_on_drop::<crate::KeyFrag>();
        assert_zeroize_on_drop::<crate::KemKey>();
        assert_zeroize_on_drop::<crate::MasterSecret>();
        assert_zeroize_on_drop::<Zeroizing<[u8; crate::KeyFrag::LEN]>>();
    }

    fn assert_point_cleared(p: &Point) {
        assert_eq!(p.bytes, [0u8; POINT_LEN]);
        assert_eq!(p.affine.x.to_repr(), FieldBytes::default());
        assert_eq!(p.affine.y.to_repr(), FieldBytes::default());
    }

    #[test]
    fn zeroize_clears_points() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let k = random_nonzero_scalar(&mut rng);
        let mut p = Point::from_jacobian(&mul_g(&k)).unwrap();
        assert_ne!(p.bytes, [0u8; POINT_LEN]);
        let mut slot = p;
        p.zeroize();
        assert_point_cleared(&p);

        // take() leaves nothing in the slot and keeps the point.
        let expect = slot;
        let mut secret = SecretPoint::take(&mut slot);
        assert_point_cleared(&slot);
        assert!(*secret == expect);
        assert_eq!(format!("{secret:?}"), "SecretPoint(<redacted>)");
        // What drop runs: no coordinate or encoding byte survives.
        secret.zeroize();
        assert_point_cleared(&secret);

        let mut secret = SecretPoint::from_jacobian(&mul_u(&k)).unwrap();
        assert!(secret.affine.x.to_repr() != FieldBytes::default());
        secret.zeroize();
        assert_point_cleared(&secret);
        assert!(SecretPoint::from_jacobian(&Jacobian::IDENTITY).is_none());
    }

    #[test]
    fn okm_reduction_is_in_range() {
        assert_eq!(scalar_from_okm(&[0u8; 48]), Scalar::ONE);
        let s = scalar_from_okm(&[0xff; 48]);
        assert!(!bool::from(s.is_zero()));
    }
}

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
    group::{Curve as _, Group, GroupEncoding},
    ops::{MulByGeneratorVartime, Reduce},
    subtle::{Choice, ConditionallySelectable, ConstantTimeEq},
};
use p256::{AffinePoint, FieldBytes, NistP256, ProjectivePoint, Scalar};
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::dst;
use crate::error::{Error, Result};

/// Length of a SEC1 compressed point.
pub const POINT_LEN: usize = 33;
/// Length of a big-endian scalar.
pub const SCALAR_LEN: usize = 32;

/// A non-identity curve point together with its SEC1 compressed encoding,
/// so that hashing and serialising never recompute the (costly) affine form.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub(crate) affine: AffinePoint,
    pub(crate) bytes: [u8; POINT_LEN],
}

impl Point {
    /// `None` for the identity, which has no 33-byte encoding.
    pub(crate) fn from_affine(affine: AffinePoint) -> Option<Self> {
        if bool::from(affine.is_identity()) {
            return None;
        }
        let enc = affine.to_bytes();
        let mut bytes = [0u8; POINT_LEN];
        bytes.copy_from_slice(&enc);
        Some(Self { affine, bytes })
    }

    pub(crate) fn from_projective(p: &ProjectivePoint) -> Option<Self> {
        Self::from_affine(p.to_affine())
    }

    /// Normalises several points with a single field inversion.
    pub(crate) fn batch_from_projective<const N: usize>(
        points: &[ProjectivePoint; N],
    ) -> Option<[Self; N]> {
        let mut affine = [AffinePoint::IDENTITY; N];
        ProjectivePoint::batch_normalize(points, &mut affine);
        let mut out = [Self::placeholder(); N];
        for (slot, a) in out.iter_mut().zip(affine) {
            *slot = Self::from_affine(a)?;
        }
        Some(out)
    }

    fn placeholder() -> Self {
        Self {
            affine: AffinePoint::GENERATOR,
            bytes: [0u8; POINT_LEN],
        }
    }

    /// Decodes a SEC1 compressed point (tag `0x02`/`0x03`, x < p, on the
    /// curve). The identity cannot be encoded in 33 bytes and is rejected.
    pub(crate) fn from_bytes(bytes: &[u8], what: &'static str) -> Result<Self> {
        let arr: [u8; POINT_LEN] = bytes.try_into().map_err(|_| Error::Malformed(what))?;
        if arr[0] != 0x02 && arr[0] != 0x03 {
            return Err(Error::Malformed(what));
        }
        let repr = Array::from(arr);
        let affine: Option<AffinePoint> = AffinePoint::from_bytes(&repr).into();
        let affine = affine.ok_or(Error::Malformed(what))?;
        let point = Self::from_affine(affine).ok_or(Error::Malformed(what))?;
        // Canonical: re-encoding must give the same bytes.
        if point.bytes != arr {
            return Err(Error::Malformed(what));
        }
        Ok(point)
    }

    pub(crate) fn proj(&self) -> ProjectivePoint {
        ProjectivePoint::from(self.affine)
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

/// A uniformly random non-zero scalar: 64 random bytes reduced mod n
/// (bias < 2^-256), resampled if zero.
pub(crate) fn random_nonzero_scalar(rng: &mut (impl CryptoRng + ?Sized)) -> Scalar {
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
    let wide = U384::from_be_slice(okm);
    let n_minus_1 = NistP256::ORDER_MINUS_ONE;
    let modulus = NonZero::new(n_minus_1.resize::<{ U384::LIMBS }>()).expect("n - 1 is not zero");
    let reduced: U256 = wide.rem(&modulus).resize::<{ U256::LIMBS }>();
    let s = <Scalar as Reduce<U256>>::reduce(&reduced);
    s + Scalar::ONE
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
        Point::from_projective(&p).expect("hash_to_curve output is not the identity")
    });
    &U
}

// ---------------------------------------------------------------------------
// Fixed-base multiplication
// ---------------------------------------------------------------------------

/// Window width of the fixed-base tables (signed digits in [-2^(W-1), 2^(W-1)]).
const W: usize = 6;
/// Number of table entries per window: multiples 1..=2^(W-1).
const ENTRIES: usize = 1 << (W - 1);
/// Number of signed radix-2^W digits needed for a 256-bit scalar.
const DIGITS: usize = 256usize.div_ceil(W) + 1;

/// Precomputed affine multiples `j * 2^(W*i) * B` for `j = 1..=2^(W-1)` and
/// every window `i`: a fixed-base scalar multiplication is then `DIGITS`
/// mixed additions and no doublings.
pub(crate) struct FixedBaseTable {
    windows: Vec<[AffinePoint; ENTRIES]>,
}

impl FixedBaseTable {
    fn new(base: ProjectivePoint) -> Self {
        let mut proj = Vec::with_capacity(DIGITS * ENTRIES);
        let mut window_base = base;
        for _ in 0..DIGITS {
            let mut acc = window_base;
            for _ in 0..ENTRIES {
                proj.push(acc);
                acc += window_base;
            }
            // acc = (ENTRIES + 1) * window_base; next base is 2^W * window_base.
            for _ in 0..W {
                window_base = window_base.double();
            }
        }
        let mut affine = vec![AffinePoint::IDENTITY; proj.len()];
        ProjectivePoint::batch_normalize(&proj, &mut affine);
        let windows = affine
            .chunks_exact(ENTRIES)
            .map(|c| {
                let mut w = [AffinePoint::IDENTITY; ENTRIES];
                w.copy_from_slice(c);
                w
            })
            .collect();
        Self { windows }
    }

    /// Constant-time `k * B`.
    pub(crate) fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let digits = signed_digits(k);
        let mut acc = ProjectivePoint::IDENTITY;
        for (window, &d) in self.windows.iter().zip(digits.iter()) {
            acc += select_ct(window, d);
        }
        acc
    }

    /// Variable-time `k * B` (public `k` only).
    pub(crate) fn mul_vartime(&self, k: &Scalar) -> ProjectivePoint {
        let digits = signed_digits(k);
        let mut acc = ProjectivePoint::IDENTITY;
        for (window, &d) in self.windows.iter().zip(digits.iter()) {
            if d != 0 {
                let p = window[usize::from(d.unsigned_abs()) - 1];
                if d < 0 {
                    acc += -p;
                } else {
                    acc += p;
                }
            }
        }
        acc
    }
}

/// Constant-time signed recoding: `k = sum d_i 2^(W i)`, `d_i` in
/// `[-2^(W-1), 2^(W-1))` except the top digit which absorbs the final carry.
fn signed_digits(k: &Scalar) -> [i8; DIGITS] {
    let repr = k.to_repr();
    // little-endian bytes
    let mut le = [0u8; 33];
    for (i, b) in repr.iter().rev().enumerate() {
        le[i] = *b;
    }
    let mut digits = [0i8; DIGITS];
    let mut carry: i16 = 0;
    for (i, digit) in digits.iter_mut().enumerate() {
        let bit = i * W;
        let byte = bit / 8;
        let shift = bit % 8;
        let lo = u16::from(le[byte]);
        let hi = if byte + 1 < le.len() {
            u16::from(le[byte + 1])
        } else {
            0
        };
        let window = ((lo | (hi << 8)) >> shift) & ((1 << W) - 1);
        #[allow(clippy::cast_possible_wrap)]
        let v = window as i16 + carry;
        carry = (v + (1 << (W - 1))) >> W;
        #[allow(clippy::cast_possible_truncation)]
        {
            *digit = (v - (carry << W)) as i8;
        }
    }
    le.zeroize();
    digits
}

/// Constant-time selection of `d * entry` (`d` may be negative or zero).
fn select_ct(window: &[AffinePoint; ENTRIES], d: i8) -> AffinePoint {
    #[allow(clippy::cast_sign_loss)]
    let neg = Choice::from(((d as u8) >> 7) & 1);
    let abs = u8::conditional_select(&(d as u8), &(d.wrapping_neg() as u8), neg);
    let mut out = AffinePoint::IDENTITY;
    for (j, p) in window.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation)]
        let hit = abs.ct_eq(&((j + 1) as u8));
        out.conditional_assign(p, hit);
    }
    let negated = -out;
    out.conditional_assign(&negated, neg);
    out
}

fn g_table() -> &'static FixedBaseTable {
    static T: LazyLock<FixedBaseTable> =
        LazyLock::new(|| FixedBaseTable::new(ProjectivePoint::GENERATOR));
    &T
}

fn u_table() -> &'static FixedBaseTable {
    static T: LazyLock<FixedBaseTable> =
        LazyLock::new(|| FixedBaseTable::new(generator_u().proj()));
    &T
}

/// Constant-time `k * G`.
pub(crate) fn mul_g(k: &Scalar) -> ProjectivePoint {
    g_table().mul(k)
}

/// Variable-time `k * G`.
pub(crate) fn mul_g_vartime(k: &Scalar) -> ProjectivePoint {
    g_table().mul_vartime(k)
}

/// Constant-time `k * U`.
pub(crate) fn mul_u(k: &Scalar) -> ProjectivePoint {
    u_table().mul(k)
}

/// Variable-time `k * U`.
pub(crate) fn mul_u_vartime(k: &Scalar) -> ProjectivePoint {
    u_table().mul_vartime(k)
}

/// Variable-time `a * G + b * P` (public scalars only).
#[allow(dead_code)]
pub(crate) fn mul_g_add_vartime(a: &Scalar, b: &Scalar, p: &ProjectivePoint) -> ProjectivePoint {
    ProjectivePoint::mul_by_generator_and_mul_add_vartime(a, b, p)
}

/// Forces the lazily computed tables (e.g. before timing something).
pub fn warm_up() {
    let _ = g_table();
    let _ = u_table();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn fixed_base_matches_generic() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let u = generator_u().proj();
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
            assert_eq!(mul_g(&k), ProjectivePoint::GENERATOR * k);
            assert_eq!(mul_g_vartime(&k), ProjectivePoint::GENERATOR * k);
            assert_eq!(mul_u(&k), u * k);
            assert_eq!(mul_u_vartime(&k), u * k);
        }
    }

    #[test]
    fn okm_reduction_is_in_range() {
        assert_eq!(scalar_from_okm(&[0u8; 48]), Scalar::ONE);
        let s = scalar_from_okm(&[0xff; 48]);
        assert!(!bool::from(s.is_zero()));
    }
}

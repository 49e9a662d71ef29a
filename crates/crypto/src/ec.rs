//! P-256 point arithmetic in Jacobian coordinates over fiat-crypto's
//! verified field arithmetic ([`crate::field`]).
//!
//! Why: `p256` 0.14 only offers complete projective formulas (a doubling
//! costs ~8M+3S plus many additions); Jacobian doubling for `a = -3` costs
//! 3M+5S and mixed addition 7M+4S, which makes scalar multiplication ~2x
//! faster. Nothing here is a different curve implementation: the field
//! arithmetic is fiat-crypto's generated code (about a third faster per
//! point operation than `p256`'s generic field); encodings, decompression
//! and hashing to the curve come from `p256` and `hash2curve` (points cross
//! over as canonical coordinate bytes).
//!
//! Exceptional cases of the incomplete formulas are handled explicitly:
//! - constant-time routines handle identity operands with conditional
//!   selects, and either use algorithms whose additions provably never see
//!   `P == Q` for scalars in `[0, n)` (comb, fixed-base windows; see the
//!   comments) or fall back to a selected doubling ([`Jacobian::add_affine_complete_ct`]),
//!   which the multi-scalar [`lincomb_many_validated_ct`] needs for its last
//!   digit even with one point;
//! - variable-time routines (public data only) branch on every case.
//!
//! Secrets: the constant-time routines zeroize what they leave behind
//! that depends on the secret scalar (limbs, recoded digits, the selected
//! table entries, selected doublings, inversion temporaries); the result
//! itself belongs to the caller, who wraps it in `Zeroizing` when it is
//! secret. Field temporaries inside the formulas are overwritten by the
//! next operation and are not tracked.

use p256::elliptic_curve::{
    PrimeField,
    point::AffineCoordinates,
    subtle::{Choice, ConditionallySelectable, ConstantTimeEq},
};
use p256::{AffinePoint, FieldBytes, Scalar};
use zeroize::{Zeroize, Zeroizing};

/// The P-256 base field element type (fiat-crypto's, see [`crate::field`]).
pub(crate) type Fe = crate::field::FieldElement;

/// An affine point that is never the identity (except once zeroized, when
/// both coordinates are 0).
#[derive(Clone, Copy, Debug, Zeroize)]
pub(crate) struct Affine {
    pub(crate) x: Fe,
    pub(crate) y: Fe,
}

impl Default for Affine {
    fn default() -> Self {
        Self::generator()
    }
}

impl ConditionallySelectable for Affine {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Self {
            x: Fe::conditional_select(&a.x, &b.x, choice),
            y: Fe::conditional_select(&a.y, &b.y, choice),
        }
    }
}

impl PartialEq for Affine {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.x.ct_eq(&other.x) & self.y.ct_eq(&other.y))
    }
}

impl Eq for Affine {}

impl Affine {
    pub(crate) fn generator() -> Self {
        Self::from_p256(&AffinePoint::GENERATOR).expect("G is not the identity")
    }

    /// `None` for the identity.
    pub(crate) fn from_p256(p: &AffinePoint) -> Option<Self> {
        if bool::from(p.is_identity()) {
            return None;
        }
        let x = Fe::from_repr(p.x()).into_option()?;
        let y = Fe::from_repr(p.y()).into_option()?;
        Some(Self { x, y })
    }

    /// SEC1 compressed encoding.
    pub(crate) fn to_compressed(self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = 0x02 | self.y.is_odd().unwrap_u8();
        let x = Zeroizing::new(self.x.to_repr());
        out[1..].copy_from_slice(&x);
        out
    }

    pub(crate) fn x_bytes(&self) -> FieldBytes {
        self.x.to_repr()
    }

    pub(crate) fn neg(&self) -> Self {
        Self {
            x: self.x,
            y: -self.y,
        }
    }

    fn conditional_negate(&mut self, choice: Choice) {
        let neg = -self.y;
        self.y.conditional_assign(&neg, choice);
    }
}

/// An affine point stored as plain words (canonical big-endian `x || y`),
/// so that constant-time table lookups are a few masked word operations
/// instead of field-element selects. The all-zero entry stands for the
/// identity.
#[derive(Clone, Copy, Default, Zeroize)]
pub(crate) struct Raw([u64; 8]);

impl Raw {
    fn from_affine(a: &Affine) -> Self {
        let mut w = [0u64; 8];
        for (i, chunk) in
            a.x.to_repr()
                .chunks_exact(8)
                .chain(a.y.to_repr().chunks_exact(8))
                .enumerate()
        {
            w[i] = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
        }
        Self(w)
    }

    /// Constant-time conversion back (the words come from a valid point or
    /// are all zero).
    fn to_affine(self) -> Affine {
        let mut x = Zeroizing::new(FieldBytes::default());
        let mut y = Zeroizing::new(FieldBytes::default());
        for i in 0..4 {
            x[8 * i..8 * i + 8].copy_from_slice(&self.0[i].to_be_bytes());
            y[8 * i..8 * i + 8].copy_from_slice(&self.0[4 + i].to_be_bytes());
        }
        Affine {
            x: Fe::from_repr(*x).unwrap_or(Fe::ZERO),
            y: Fe::from_repr(*y).unwrap_or(Fe::ZERO),
        }
    }
}

/// Constant-time `entries[idx - 1]` (all zeros for `idx = 0`): every entry
/// is read and masked.
#[inline(always)]
fn select_raw(entries: &[Raw], idx: u8) -> Raw {
    let mut out = Raw::default();
    for (j, e) in entries.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation)]
        let hit = idx.ct_eq(&((j + 1) as u8));
        let mask = u64::from(hit.unwrap_u8()).wrapping_neg();
        for (o, w) in out.0.iter_mut().zip(e.0.iter()) {
            *o |= w & mask;
        }
    }
    out
}

/// Constant-time signed lookup: `|d| * P` from `entries[|d| - 1]`, negated
/// if `d < 0`; also returns whether `d = 0` (identity).
#[inline(always)]
fn select_signed(entries: &[Raw], d: i8) -> (Affine, Choice) {
    #[allow(clippy::cast_sign_loss)]
    let neg = Choice::from(((d as u8) >> 7) & 1);
    #[allow(clippy::cast_sign_loss)]
    let abs = u8::conditional_select(&(d as u8), &(d.wrapping_neg() as u8), neg);
    let raw = Zeroizing::new(select_raw(entries, abs));
    let mut a = raw.to_affine();
    a.conditional_negate(neg);
    (a, abs.ct_eq(&0))
}

/// A point in Jacobian coordinates `(X/Z^2, Y/Z^3)`; the identity has `Z = 0`
/// (so a zeroized value is the identity).
#[derive(Clone, Copy, Debug, Zeroize)]
pub(crate) struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl ConditionallySelectable for Jacobian {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Self {
            x: Fe::conditional_select(&a.x, &b.x, choice),
            y: Fe::conditional_select(&a.y, &b.y, choice),
            z: Fe::conditional_select(&a.z, &b.z, choice),
        }
    }
}

impl From<Affine> for Jacobian {
    fn from(a: Affine) -> Self {
        Self {
            x: a.x,
            y: a.y,
            z: Fe::ONE,
        }
    }
}

impl Jacobian {
    pub(crate) const IDENTITY: Self = Self {
        x: Fe::ONE,
        y: Fe::ONE,
        z: Fe::ZERO,
    };

    pub(crate) fn is_identity(&self) -> Choice {
        self.z.is_zero()
    }

    /// `2P`: "dbl-2001-b" for `a = -3` with `Z3 = 2 Y Z` and
    /// `8 gamma^2 = 2 (2 gamma)^2` (4M + 4S, fewer field additions, which
    /// cost about a third of a multiplication in `p256`). Complete for a
    /// prime-order group: the identity (Z = 0) maps to Z = 0.
    pub(crate) fn double(&self) -> Self {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x * gamma;
        let t = (self.x - delta) * (self.x + delta);
        let alpha = t.double() + t;
        let beta4 = beta.double().double();
        let x3 = alpha.square() - beta4.double();
        let z3 = (self.y * self.z).double();
        let gamma_sq8 = gamma.double().square().double();
        let y3 = alpha * (beta4 - x3) - gamma_sq8;
        Self {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// Raw "madd-2004-hmv" mixed addition (8M + 3S, only 7 field
    /// additions). Also returns `H` and `r`: the result is wrong when `self`
    /// is the identity or `self == q` (`H = r = 0`); `self == -q` correctly
    /// gives the identity.
    #[inline(always)]
    fn madd_raw(&self, q: &Affine) -> (Self, Fe, Fe) {
        let z1z1 = self.z.square();
        let z1z1z1 = z1z1 * self.z;
        let h = z1z1 * q.x - self.x;
        let r = z1z1z1 * q.y - self.y;
        let z3 = self.z * h;
        let hh = h.square();
        let hhh = hh * h;
        let v = hh * self.x;
        let x3 = r.square() - v.double() - hhh;
        let y3 = (v - x3) * r - hhh * self.y;
        (
            Self {
                x: x3,
                y: y3,
                z: z3,
            },
            h,
            r,
        )
    }

    /// Constant-time `self + q` where `q` may be the identity
    /// (`q_is_identity`, in which case `q`'s coordinates are ignored) and
    /// `self` may be the identity. The caller guarantees `self != q`.
    #[inline(always)]
    pub(crate) fn add_affine_ct(&self, q: &Affine, q_is_identity: Choice) -> Self {
        let (mut out, _, _) = self.madd_raw(q);
        out.conditional_assign(&Self::from(*q), self.is_identity());
        out.conditional_assign(self, q_is_identity);
        out
    }

    /// Constant-time `self + q` for all inputs, including `self == q`
    /// (costs an extra doubling).
    pub(crate) fn add_affine_complete_ct(&self, q: &Affine, q_is_identity: Choice) -> Self {
        let (mut out, h, r) = self.madd_raw(q);
        let dbl = Zeroizing::new(self.double());
        let same = h.is_zero() & r.is_zero() & !self.is_identity();
        out.conditional_assign(&dbl, same);
        out.conditional_assign(&Self::from(*q), self.is_identity());
        out.conditional_assign(self, q_is_identity);
        out
    }

    /// Variable-time `self + q` for all inputs.
    pub(crate) fn add_affine_vartime(&self, q: &Affine) -> Self {
        if bool::from(self.is_identity()) {
            return Self::from(*q);
        }
        let (out, h, r) = self.madd_raw(q);
        if bool::from(h.is_zero()) {
            if bool::from(r.is_zero()) {
                return self.double();
            }
            return Self::IDENTITY;
        }
        out
    }

    /// Variable-time `self + other` for all inputs ("add-2007-bl", 11M + 5S).
    pub(crate) fn add_vartime(&self, other: &Self) -> Self {
        if bool::from(self.is_identity()) {
            return *other;
        }
        if bool::from(other.is_identity()) {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = other.z.square();
        let u1 = self.x * z2z2;
        let u2 = other.x * z1z1;
        let s1 = self.y * other.z * z2z2;
        let s2 = other.y * self.z * z1z1;
        let h = u2 - u1;
        let r = (s2 - s1).double();
        if bool::from(h.is_zero()) {
            if bool::from(r.is_zero()) {
                return self.double();
            }
            return Self::IDENTITY;
        }
        let i = h.double().square();
        let j = h * i;
        let v = u1 * i;
        let x3 = r.square() - j - v.double();
        let y3 = r * (v - x3) - (s1 * j).double();
        let z3 = ((self.z + other.z).square() - z1z1 - z2z2) * h;
        Self {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// Constant-time `self + other` for all inputs ("add-2007-bl" plus a
    /// selected doubling and identity fix-ups).
    pub(crate) fn add_complete_ct(&self, other: &Self) -> Self {
        let z1z1 = self.z.square();
        let z2z2 = other.z.square();
        let u1 = self.x * z2z2;
        let u2 = other.x * z1z1;
        let s1 = self.y * other.z * z2z2;
        let s2 = other.y * self.z * z1z1;
        let h = u2 - u1;
        let r = (s2 - s1).double();
        let i = h.double().square();
        let j = h * i;
        let v = u1 * i;
        let x3 = r.square() - j - v.double();
        let y3 = r * (v - x3) - (s1 * j).double();
        let z3 = ((self.z + other.z).square() - z1z1 - z2z2) * h;
        let mut out = Self {
            x: x3,
            y: y3,
            z: z3,
        };
        let id1 = self.is_identity();
        let id2 = other.is_identity();
        let same = h.is_zero() & r.is_zero() & !id1 & !id2;
        let dbl = Zeroizing::new(self.double());
        out.conditional_assign(&dbl, same);
        out.conditional_assign(other, id1);
        out.conditional_assign(self, id2);
        out
    }

    /// Constant-time equality (identity == identity).
    pub(crate) fn ct_eq(&self, other: &Self) -> Choice {
        let z1z1 = self.z.square();
        let z2z2 = other.z.square();
        let x_eq = (self.x * z2z2).ct_eq(&(other.x * z1z1));
        let y_eq = (self.y * other.z * z2z2).ct_eq(&(other.y * self.z * z1z1));
        let id1 = self.is_identity();
        let id2 = other.is_identity();
        (id1 & id2) | (!id1 & !id2 & x_eq & y_eq)
    }

    /// Constant-time conversion; `None` for the identity.
    pub(crate) fn to_affine(self) -> Option<Affine> {
        let zinv = Zeroizing::new(self.z.invert().into_option()?);
        let zinv2 = Zeroizing::new(zinv.square());
        Some(Affine {
            x: self.x * *zinv2,
            y: self.y * *zinv2 * *zinv,
        })
    }
}

/// Converts many points with one (constant-time) field inversion.
/// Identities come back as `None`; the control flow does not depend on
/// which points are the identity.
pub(crate) fn batch_to_affine(points: &[Jacobian]) -> Vec<Option<Affine>> {
    let mut prefix: Zeroizing<Vec<Fe>> = Zeroizing::new(Vec::with_capacity(points.len()));
    let mut acc = Zeroizing::new(Fe::ONE);
    for p in points {
        prefix.push(*acc);
        let z = Fe::conditional_select(&p.z, &Fe::ONE, p.is_identity());
        *acc *= z;
    }
    let mut inv = Zeroizing::new(acc.invert().unwrap_or(Fe::ZERO));
    let mut out = vec![None; points.len()];
    for i in (0..points.len()).rev() {
        let p = &points[i];
        let is_id = p.is_identity();
        let z = Fe::conditional_select(&p.z, &Fe::ONE, is_id);
        let zinv = Zeroizing::new(*inv * prefix[i]);
        *inv *= z;
        let zinv2 = Zeroizing::new(zinv.square());
        let a = Affine {
            x: p.x * *zinv2,
            y: p.y * *zinv2 * *zinv,
        };
        out[i] = if bool::from(is_id) { None } else { Some(a) };
    }
    out
}

// ---------------------------------------------------------------------------
// Scalar recodings
// ---------------------------------------------------------------------------

/// Little-endian 64-bit limbs of a canonical scalar.
/// The caller zeroizes the result when `k` is secret.
fn limbs(k: &Scalar) -> [u64; 4] {
    let repr = Zeroizing::new(k.to_repr());
    let mut out = [0u64; 4];
    for (i, limb) in out.iter_mut().enumerate() {
        let start = 32 - 8 * (i + 1);
        let mut b = Zeroizing::new([0u8; 8]);
        b.copy_from_slice(&repr[start..start + 8]);
        *limb = u64::from_be_bytes(*b);
    }
    out
}

/// Signed radix-16 digits in `[-8, 8)` (top digit absorbs the carry):
/// `k = sum d_i 16^i`, 65 digits. Constant-time; the caller zeroizes the
/// digits.
fn radix16(k: &Scalar) -> [i8; 65] {
    let l = Zeroizing::new(limbs(k));
    let mut d = [0i8; 65];
    for (i, digit) in d.iter_mut().take(64).enumerate() {
        #[allow(clippy::cast_possible_truncation)]
        {
            *digit = ((l[i / 16] >> (4 * (i % 16))) & 0xf) as i8;
        }
    }
    for i in 0..64 {
        let carry = (d[i] + 8) >> 4;
        d[i] -= carry << 4;
        d[i + 1] += carry;
    }
    d
}

/// Width-`w` NAF (variable time): digits are 0 or odd in `(-2^(w-1), 2^(w-1))`.
fn wnaf(k: &Scalar, w: u32) -> [i8; 257] {
    let mut l = limbs(k);
    let mut out = [0i8; 257];
    let width = 1u64 << w;
    let half = width >> 1;
    let mut i = 0;
    while i < 257 {
        if l.iter().all(|&x| x == 0) {
            break;
        }
        if l[0] & 1 == 1 {
            let m = l[0] & (width - 1);
            #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
            let d = if m >= half {
                m as i64 - width as i64
            } else {
                m as i64
            };
            sub_signed(&mut l, d);
            #[allow(clippy::cast_possible_truncation)]
            {
                out[i] = d as i8;
            }
        }
        shr1(&mut l);
        i += 1;
    }
    out
}

/// `l -= d` for a small signed `d`: subtracting a negative digit is adding
/// its magnitude, with the same ripple. The ripple stops as soon as there is
/// no borrow (carry) left, so this is variable time, like [`wnaf`].
fn sub_signed(l: &mut [u64; 4], d: i64) {
    let op: fn(u64, u64) -> (u64, bool) = if d > 0 {
        u64::overflowing_sub
    } else {
        u64::overflowing_add
    };
    let (r, mut ripple) = op(l[0], d.unsigned_abs());
    l[0] = r;
    for limb in l.iter_mut().skip(1) {
        if !ripple {
            break;
        }
        let (r, more) = op(*limb, 1);
        *limb = r;
        ripple = more;
    }
}

fn shr1(l: &mut [u64; 4]) {
    for i in 0..4 {
        let hi = if i < 3 { l[i + 1] << 63 } else { 0 };
        l[i] = (l[i] >> 1) | hi;
    }
}

// ---------------------------------------------------------------------------
// Fixed-base tables (G and U)
// ---------------------------------------------------------------------------

const FB_W: usize = 6;
const FB_ENTRIES: usize = 1 << (FB_W - 1);
const FB_DIGITS: usize = 256usize.div_ceil(FB_W) + 1;

/// Affine multiples `j * 2^(6i) * B`, `j = 1..=32`, for 44 windows: a
/// fixed-base multiplication is 44 mixed additions and no doublings.
///
/// Exception-freeness of [`FixedBaseTable::mul_ct`] for `k` in `[0, n)`:
/// before window `i` the accumulator is `a B` with `|a| <= 32 (2^(6i) - 1) / 63`
/// and the added entry is `e B` with `2^(6i) <= |e| <= 32 * 2^(6i)`; so
/// `a != ±e` as integers and, for windows `i <= 41`, `|a| + |e| < n`, hence
/// `aB != ±eB`. The top non-zero window `i = 42` (bits 252..=255 plus the
/// carry, `|e| <= 2^256`) is the last, so `a + e = k`: `a = -e (mod n)`
/// means `k = 0`, and `a = e (mod n)` means `k = 2a` (impossible, as
/// `|a| < |e|`) or `k = n + 2a` with `e = n + a = d 2^252`, which no
/// `d <= 16` with `|a| < 2^252 / 1.9` satisfies.
pub(crate) struct FixedBaseTable {
    windows: Vec<[Affine; FB_ENTRIES]>,
    raw: Vec<[Raw; FB_ENTRIES]>,
}

impl FixedBaseTable {
    /// Builds the table (variable time: the base is public).
    pub(crate) fn new(base: &Affine) -> Self {
        let mut proj = Vec::with_capacity(FB_DIGITS * FB_ENTRIES);
        let mut window_base = Jacobian::from(*base);
        for _ in 0..FB_DIGITS {
            let wb_affine = window_base
                .to_affine()
                .expect("multiples of B are not the identity");
            let mut acc = window_base;
            for _ in 0..FB_ENTRIES {
                proj.push(acc);
                acc = acc.add_affine_vartime(&wb_affine);
            }
            for _ in 0..FB_W {
                window_base = window_base.double();
            }
        }
        let affine = batch_to_affine(&proj);
        let windows = affine
            .chunks_exact(FB_ENTRIES)
            .map(|c| {
                let mut w = [Affine::default(); FB_ENTRIES];
                for (slot, a) in w.iter_mut().zip(c) {
                    *slot = a.expect("small multiples of B are not the identity");
                }
                w
            })
            .collect::<Vec<_>>();
        let raw = windows
            .iter()
            .map(|w| w.map(|a| Raw::from_affine(&a)))
            .collect();
        Self { windows, raw }
    }

    /// The caller zeroizes the digits when `k` is secret.
    fn digits(k: &Scalar) -> [i8; FB_DIGITS] {
        let l = Zeroizing::new(limbs(k));
        let bit = |i: usize| -> u64 {
            if i >= 256 {
                0
            } else {
                (l[i / 64] >> (i % 64)) & 1
            }
        };
        let mut digits = [0i8; FB_DIGITS];
        let mut carry: i16 = 0;
        for (i, digit) in digits.iter_mut().enumerate() {
            let mut window: u64 = 0;
            for b in 0..FB_W {
                window |= bit(i * FB_W + b) << b;
            }
            #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
            let v = window as i16 + carry;
            carry = (v + (1 << (FB_W - 1))) >> FB_W;
            #[allow(clippy::cast_possible_truncation)]
            {
                *digit = (v - (carry << FB_W)) as i8;
            }
        }
        digits
    }

    /// Constant-time `k * B`.
    pub(crate) fn mul_ct(&self, k: &Scalar) -> Jacobian {
        let digits = Zeroizing::new(Self::digits(k));
        let mut acc = Jacobian::IDENTITY;
        let mut sel = Zeroizing::new(Affine::default());
        for (window, &d) in self.raw.iter().zip(digits.iter()) {
            let is_zero;
            (*sel, is_zero) = select_signed(window, d);
            acc = acc.add_affine_ct(&sel, is_zero);
        }
        acc
    }

    /// Variable-time `k * B` (public `k`).
    pub(crate) fn mul_vartime(&self, k: &Scalar) -> Jacobian {
        let digits = Self::digits(k);
        let mut acc = Jacobian::IDENTITY;
        for (window, &d) in self.windows.iter().zip(digits.iter()) {
            if d != 0 {
                let p = window[usize::from(d.unsigned_abs()) - 1];
                let p = if d < 0 { p.neg() } else { p };
                acc = acc.add_affine_vartime(&p);
            }
        }
        acc
    }
}

// ---------------------------------------------------------------------------
// Variable-base, constant-time: comb
// ---------------------------------------------------------------------------

/// A comb table with `TEETH` teeth for a public base `P`: with spacing
/// `d = ceil(256 / TEETH)`, entry `b` is `sum_{j: bit j of b} 2^(d j) P`.
/// Multiplication is then `d` doublings and `d` mixed additions, and
/// several scalars on the same base share the table (`(TEETH - 1) d`
/// doublings to build). 4 teeth suit one or two scalars, 5 teeth four.
///
/// Exception-freeness of [`CombTable::mul_ct`] for `k` in `[0, n)`: write
/// `k = sum_j 2^(d j) k_j` (`d`-bit lanes, the top lane shorter since
/// `k < 2^256`). Before the step for bit `i` the (doubled) accumulator is
/// `2a P` where `2a` has lanes `2 floor(k_j / 2^(i+1))`, and the entry is
/// `c P` with lanes `bit_i(k_j)`. As integers `2a = c` only if both are 0
/// (identity, handled), `2a < 2^(256-i) <= 2^255 < n` for `i >= 1`, and for
/// `i = 0`, `2a = k - c`, so `2a - c = ±n` or `2a + c = n` would need
/// `k >= n`. Hence the accumulator never equals `±` the entry.
pub(crate) struct CombTable<const TEETH: usize> {
    entries: Vec<Raw>,
}

impl<const TEETH: usize> CombTable<TEETH> {
    /// Bits per tooth (lane width).
    const SPACING: usize = 256usize.div_ceil(TEETH);

    /// Builds the table (variable time: the base is public).
    pub(crate) fn new(base: &Affine) -> Self {
        let mut teeth = [Jacobian::from(*base); TEETH];
        for j in 1..TEETH {
            let mut p = teeth[j - 1];
            for _ in 0..Self::SPACING {
                p = p.double();
            }
            teeth[j] = p;
        }
        let size = 1usize << TEETH;
        let mut jac = vec![Jacobian::IDENTITY; size];
        for b in 1..size {
            let low = b & b.wrapping_neg();
            let j = low.trailing_zeros() as usize;
            jac[b] = if b == low {
                teeth[j]
            } else {
                jac[b & (b - 1)].add_vartime(&teeth[j])
            };
        }
        let entries = batch_to_affine(&jac[1..])
            .into_iter()
            .map(|a| {
                Raw::from_affine(
                    &a.expect("distinct small combinations of 2^(d j) P are not the identity"),
                )
            })
            .collect();
        Self { entries }
    }

    /// Constant-time `k * P`.
    pub(crate) fn mul_ct(&self, k: &Scalar) -> Jacobian {
        let l = Zeroizing::new(limbs(k));
        let bit = |pos: usize| -> u64 {
            if pos < 256 {
                (l[pos / 64] >> (pos % 64)) & 1
            } else {
                0
            }
        };
        let mut acc = Jacobian::IDENTITY;
        let mut raw = Zeroizing::new(Raw::default());
        let mut sel = Zeroizing::new(Affine::default());
        for i in (0..Self::SPACING).rev() {
            acc = acc.double();
            let mut b = 0u64;
            for j in 0..TEETH {
                b |= bit(j * Self::SPACING + i) << j;
            }
            #[allow(clippy::cast_possible_truncation)]
            let b = b as u8;
            *raw = select_raw(&self.entries, b);
            *sel = raw.to_affine();
            acc = acc.add_affine_ct(&sel, b.ct_eq(&0));
        }
        acc
    }
}

impl<const TEETH: usize> CombTable<TEETH> {
    /// Constant-time `k_j * P` for several scalars at once; the
    /// independent accumulators are interleaved, which lets the CPU overlap
    /// their field operations.
    pub(crate) fn mul_many_ct<const N: usize>(&self, ks: &[Scalar; N]) -> [Jacobian; N] {
        let l: Zeroizing<[[u64; 4]; N]> = Zeroizing::new(core::array::from_fn(|j| limbs(&ks[j])));
        let mut acc = [Jacobian::IDENTITY; N];
        let mut raw = Zeroizing::new(Raw::default());
        let mut sel = Zeroizing::new(Affine::default());
        for i in (0..Self::SPACING).rev() {
            for a in &mut acc {
                *a = a.double();
            }
            for j in 0..N {
                let mut b = 0u64;
                for t in 0..TEETH {
                    let pos = t * Self::SPACING + i;
                    if pos < 256 {
                        b |= ((l[j][pos / 64] >> (pos % 64)) & 1) << t;
                    }
                }
                #[allow(clippy::cast_possible_truncation)]
                let b = b as u8;
                *raw = select_raw(&self.entries, b);
                *sel = raw.to_affine();
                acc[j] = acc[j].add_affine_ct(&sel, b.ct_eq(&0));
            }
        }
        acc
    }
}

/// Constant-time `k * P` for a public base.
pub(crate) fn mul_ct(p: &Affine, k: &Scalar) -> Jacobian {
    CombTable::<4>::new(p).mul_ct(k)
}

// ---------------------------------------------------------------------------
// Multi-scalar multiplication
// ---------------------------------------------------------------------------

/// Odd multiples `P, 3P, ..., (2m-1)P` of each point, batch-normalised
/// (variable time: points are public).
///
/// The points may be secret with public scalars (`W` in decapsulation), so
/// the intermediate multiples are zeroized and the caller zeroizes the
/// tables.
fn odd_multiples(points: &[Affine], m: usize) -> Vec<Vec<Affine>> {
    // 2P for every point, normalised together (one inversion in all).
    let doubles: Zeroizing<Vec<Jacobian>> =
        Zeroizing::new(points.iter().map(|p| Jacobian::from(*p).double()).collect());
    let doubles = Zeroizing::new(batch_to_affine(&doubles));
    let mut jac = Zeroizing::new(Vec::with_capacity(points.len() * m));
    for (p, p2) in points.iter().zip(doubles.iter()) {
        let mut acc = Jacobian::from(*p);
        jac.push(acc);
        for _ in 1..m {
            if let Some(p2) = p2 {
                acc = acc.add_affine_vartime(p2);
            }
            jac.push(acc);
        }
    }
    let affine = Zeroizing::new(batch_to_affine(&jac));
    affine
        .chunks(m)
        .map(|c| c.iter().map(|a| a.unwrap_or_default()).collect())
        .collect()
}

/// Small multiples `P, 2P, ..., 8P` of each point, batch-normalised.
fn small_multiples(points: &[Affine]) -> Vec<[Raw; 8]> {
    let mut jac = Vec::with_capacity(points.len() * 8);
    for p in points {
        let mut acc = Jacobian::from(*p);
        jac.push(acc);
        for _ in 1..8 {
            acc = acc.add_affine_vartime(p);
            jac.push(acc);
        }
    }
    batch_to_affine(&jac)
        .chunks(8)
        .map(|c| {
            let mut w = [Raw::default(); 8];
            let mut all = true;
            for (slot, a) in w.iter_mut().zip(c) {
                match a {
                    Some(a) => *slot = Raw::from_affine(a),
                    None => all = false,
                }
            }
            debug_assert!(all, "small multiples of a prime-order point");
            w
        })
        .collect()
}

/// Constant-time `sum k_i P_i` (secret scalars, public points), Straus with
/// signed radix-16 digits and shared doublings. Uses complete additions (a
/// selected doubling covers accumulator `==` entry), so it is correct
/// whatever relations the points and scalars have. (Kept as the reference
/// for the validated variant and for the timing comparison.)
#[cfg(test)]
pub(crate) fn lincomb_ct(points: &[Affine], scalars: &[Scalar]) -> Jacobian {
    let [out] = straus_ct::<true, 1>([points], scalars);
    out
}

/// Constant-time `sum_i k_i P_{j,i}` for `N` point sets sharing the same
/// secret scalars (one table batch, one recoding, interleaved
/// accumulators), with *incomplete* additions for every digit but the
/// last: identity operands are handled, but if a partial sum equals the
/// entry being added the result is a wrong point (never a different timing
/// or a panic).
///
/// For a single point (or when all but one scalar are zero) this cannot
/// happen, whatever `k` in `[0, n)`: write `k = 16 a + sum_{m <= i} d_m 16^m`
/// (`|d_m| <= 8`). Before digit `i >= 1` the accumulator is `16a P` with
/// `|16 a| < n / 16 + 9` and the entry `d_i P`, so `16 a = ±d_i (mod n)`
/// only as integers, i.e. `a = d_i = 0` (identity, handled). At the last
/// digit `16 a = k - d_0`, and `k - d_0 = d_0 (mod n)` holds for
/// `k = n + 2 d_0` (e.g. `n - 2`, where the accumulator `-P` meets the
/// entry `-P`): the last digit therefore uses the complete addition (one
/// selected doubling per point, instead of one per point and digit as in
/// `lincomb_ct`).
/// `k - d_0 = -d_0` means `k = 0` (identity, handled).
///
/// With several points, use only where (a) the points of a set are pairwise distinct (merge
/// equal points and add their scalars first), (b) nobody who cannot already
/// make the operation fail can steer the scalars or relate the points, and
/// (c) the result is validated afterwards. Decapsulation qualifies: the
/// scalars `d * lambda_i` are hash outputs known only to the grantee and
/// the owner; the owner could contrive a collision (e.g. shares with
/// `rk_2 = 2 rk_1`) but could as well hand out bad kfrags; and the final
/// check against the owner's key rejects a wrong result. With an honest
/// owner a collision needs a ~2^-250 coincidence per step.
pub(crate) fn lincomb_many_validated_ct<const N: usize>(
    point_sets: [&[Affine]; N],
    scalars: &[Scalar],
) -> [Jacobian; N] {
    straus_ct::<false, N>(point_sets, scalars)
}

fn straus_ct<const COMPLETE: bool, const N: usize>(
    point_sets: [&[Affine]; N],
    scalars: &[Scalar],
) -> [Jacobian; N] {
    let t = scalars.len();
    let all: Vec<Affine> = point_sets
        .iter()
        .flat_map(|set| {
            debug_assert_eq!(set.len(), t);
            set.iter().copied()
        })
        .collect();
    let tables = small_multiples(&all);
    let digits: Zeroizing<Vec<[i8; 65]>> = Zeroizing::new(scalars.iter().map(radix16).collect());
    let mut acc = [Jacobian::IDENTITY; N];
    let mut sel = Zeroizing::new(Affine::default());
    for i in (0..65).rev() {
        if i != 64 {
            for a in &mut acc {
                for _ in 0..4 {
                    *a = a.double();
                }
            }
        }
        for (j, a) in acc.iter_mut().enumerate() {
            for (table, d) in tables[j * t..(j + 1) * t].iter().zip(digits.iter()) {
                let is_zero;
                (*sel, is_zero) = select_signed(table, d[i]);
                // The last digit needs the complete addition even for one
                // point (see `lincomb_many_validated_ct`); `i` is public.
                *a = if COMPLETE || i == 0 {
                    a.add_affine_complete_ct(&sel, is_zero)
                } else {
                    a.add_affine_ct(&sel, is_zero)
                };
            }
        }
    }
    acc
}

/// Variable-time `sum k_i P_i` (public scalars; the points may be secret,
/// see [`odd_multiples`]), Straus with width-5 NAF.
pub(crate) fn lincomb_vartime(points: &[Affine], scalars: &[Scalar]) -> Jacobian {
    debug_assert_eq!(points.len(), scalars.len());
    const W: u32 = 5;
    let tables = Zeroizing::new(odd_multiples(points, 1 << (W - 2)));
    let nafs: Vec<[i8; 257]> = scalars.iter().map(|k| wnaf(k, W)).collect();
    let top = nafs
        .iter()
        .filter_map(|n| n.iter().rposition(|&d| d != 0))
        .max();
    let Some(top) = top else {
        return Jacobian::IDENTITY;
    };
    let mut acc = Jacobian::IDENTITY;
    for i in (0..=top).rev() {
        acc = acc.double();
        for (table, naf) in tables.iter().zip(&nafs) {
            let d = naf[i];
            if d > 0 {
                acc = acc.add_affine_vartime(&table[usize::from(d.unsigned_abs()) / 2]);
            } else if d < 0 {
                acc = acc.add_affine_vartime(&table[usize::from(d.unsigned_abs()) / 2].neg());
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ProjectivePoint;
    use p256::elliptic_curve::group::Group;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn to_p256(j: &Jacobian) -> ProjectivePoint {
        match j.to_affine() {
            None => ProjectivePoint::IDENTITY,
            Some(a) => {
                let enc = a.to_compressed();
                let p: Option<AffinePoint> =
                    p256::elliptic_curve::group::GroupEncoding::from_bytes(&enc.into()).into();
                ProjectivePoint::from(p.unwrap())
            }
        }
    }

    fn from_p256(p: &ProjectivePoint) -> Affine {
        Affine::from_p256(&p.to_affine()).unwrap()
    }

    fn scalars(rng: &mut ChaCha20Rng) -> Vec<Scalar> {
        let mut v = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            -Scalar::from(2u64),
            Scalar::from(2u64),
            Scalar::from(16u64),
            Scalar::from(u64::MAX),
            -Scalar::from(u64::MAX),
            Scalar::from(1u128 << 64),
            Scalar::from(u128::MAX),
            (Scalar::from(1u128 << 64) * Scalar::from(1u128 << 64)) * Scalar::from(1u128 << 64),
            -(Scalar::from(1u128 << 64) * Scalar::from(1u128 << 64)) * Scalar::from(1u128 << 64),
            Scalar::from(1u128 << 120) * Scalar::from(1u128 << 120) * Scalar::from(1u64 << 12),
        ];
        for _ in 0..24 {
            v.push(crate::arith::random_nonzero_scalar(rng));
        }
        v
    }

    #[test]
    fn formulas_match_p256() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let g = ProjectivePoint::GENERATOR;
        for k in scalars(&mut rng) {
            let p = g * k;
            let q = g * crate::arith::random_nonzero_scalar(&mut rng);
            if bool::from(p.is_identity()) {
                continue;
            }
            let pa = from_p256(&p);
            let qa = from_p256(&q);
            let pj = Jacobian::from(pa);
            assert_eq!(to_p256(&pj.double()), p.double());
            assert_eq!(to_p256(&pj.add_affine_vartime(&qa)), p + q);
            assert_eq!(to_p256(&pj.add_affine_vartime(&pa)), p.double());
            assert_eq!(
                to_p256(&pj.add_affine_vartime(&pa.neg())),
                ProjectivePoint::IDENTITY
            );
            assert_eq!(to_p256(&pj.add_affine_ct(&qa, Choice::from(0))), p + q);
            assert_eq!(to_p256(&pj.add_affine_ct(&qa, Choice::from(1))), p);
            assert_eq!(
                to_p256(&Jacobian::IDENTITY.add_affine_ct(&qa, Choice::from(0))),
                q
            );
            assert_eq!(
                to_p256(&pj.add_affine_complete_ct(&pa, Choice::from(0))),
                p.double()
            );
            assert_eq!(
                to_p256(&pj.add_affine_complete_ct(&qa, Choice::from(0))),
                p + q
            );
            // Non-normalised Jacobian inputs.
            let pd = pj.double().add_affine_vartime(&qa); // 2p + q
            assert_eq!(
                to_p256(&pd.add_vartime(&pj.double())),
                p.double().double() + q
            );
            assert_eq!(to_p256(&pd.add_vartime(&pd)), (p.double() + q).double());
            assert_eq!(
                to_p256(&pd.add_complete_ct(&pj.double())),
                p.double().double() + q
            );
            assert_eq!(to_p256(&pd.add_complete_ct(&pd)), (p.double() + q).double());
            assert_eq!(
                to_p256(&pd.add_complete_ct(&Jacobian::IDENTITY)),
                p.double() + q
            );
            assert_eq!(
                to_p256(&Jacobian::IDENTITY.add_complete_ct(&pd)),
                p.double() + q
            );
            let minus = Jacobian::from(from_p256(&-(p.double() + q)));
            assert_eq!(
                to_p256(&pd.add_complete_ct(&minus)),
                ProjectivePoint::IDENTITY
            );
            assert!(bool::from(
                pd.ct_eq(&Jacobian::from(from_p256(&(p.double() + q))))
            ));
            assert!(!bool::from(pd.ct_eq(&pj)));
        }
    }

    #[test]
    fn scalar_multiplications_match_p256() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let base = ProjectivePoint::GENERATOR * crate::arith::random_nonzero_scalar(&mut rng);
        let ba = from_p256(&base);
        let fixed = FixedBaseTable::new(&ba);
        let comb = CombTable::<4>::new(&ba);
        let comb5 = CombTable::<5>::new(&ba);
        let comb3 = CombTable::<3>::new(&ba);
        let ks = scalars(&mut rng);
        for k in &ks {
            let expect = base * k;
            assert_eq!(to_p256(&fixed.mul_ct(k)), expect);
            assert_eq!(to_p256(&fixed.mul_vartime(k)), expect);
            assert_eq!(to_p256(&comb.mul_ct(k)), expect);
            assert_eq!(to_p256(&comb5.mul_ct(k)), expect);
            assert_eq!(to_p256(&comb3.mul_ct(k)), expect);
            let [a, b] = comb5.mul_many_ct(&[*k, -*k]);
            assert_eq!(to_p256(&a), expect);
            assert_eq!(to_p256(&b), -expect);
            assert_eq!(to_p256(&lincomb_vartime(&[ba], &[*k])), expect);
            assert_eq!(to_p256(&lincomb_ct(&[ba], &[*k])), expect);
        }
        // Multi-scalar, including related and repeated points.
        let pts: Vec<ProjectivePoint> = (0..4)
            .map(|i| {
                if i == 3 {
                    base
                } else {
                    ProjectivePoint::GENERATOR * crate::arith::random_nonzero_scalar(&mut rng)
                }
            })
            .collect();
        let aff: Vec<Affine> = pts.iter().map(from_p256).collect();
        for w in ks.windows(4) {
            let expect: ProjectivePoint = pts.iter().zip(w).map(|(p, k)| *p * k).sum();
            assert_eq!(to_p256(&lincomb_vartime(&aff, w)), expect);
            assert_eq!(to_p256(&lincomb_ct(&aff, w)), expect);
            // Unrelated points and scalars: the validated variant agrees.
            if w.iter()
                .all(|k| bool::from(!p256::elliptic_curve::Field::is_zero(k)))
            {
                let rev: Vec<Affine> = aff.iter().rev().copied().collect();
                let expect_rev: ProjectivePoint =
                    pts.iter().rev().zip(w).map(|(p, k)| *p * k).sum();
                let [a, b] = lincomb_many_validated_ct([&aff[..], &rev[..]], w);
                assert_eq!(to_p256(&a), expect);
                assert_eq!(to_p256(&b), expect_rev);
            }
        }
        // Points and scalars crafted so that partial sums collide.
        let two = [ba, ba];
        for k in &ks {
            let expect = base * (*k + k);
            assert_eq!(to_p256(&lincomb_ct(&two, &[*k, *k])), expect);
            assert_eq!(to_p256(&lincomb_vartime(&two, &[*k, *k])), expect);
            assert_eq!(
                to_p256(&lincomb_ct(&two, &[*k, -*k])),
                ProjectivePoint::IDENTITY
            );
        }
    }

    /// Scalars next to 0 and to the group order `n`, where the accumulator
    /// of a recoded scalar multiplication can meet the added entry (e.g.
    /// `n - 2`: the accumulator before the last digit `-1` is `-P`).
    fn edge_scalars() -> Vec<Scalar> {
        let mut v = Vec::new();
        for m in 0u64..=40 {
            v.push(Scalar::from(m));
            v.push(-Scalar::from(m));
        }
        // Around every multiple of 2^32 of the recoding windows' weights.
        let mut pow = Scalar::ONE;
        for _ in 0..256 {
            for d in [Scalar::ZERO, Scalar::ONE, -Scalar::ONE] {
                v.push(pow + d);
                v.push(-pow + d);
            }
            pow = pow.double();
        }
        v
    }

    #[test]
    fn validated_lincomb_single_point_n_minus_2() {
        // One point, k = n - 2: the result must be -2P, not the identity.
        let p = ProjectivePoint::GENERATOR * Scalar::from(7u64);
        let k = -Scalar::from(2u64);
        let [r] = lincomb_many_validated_ct([&[from_p256(&p)][..]], &[k]);
        assert_eq!(to_p256(&r), p * k);
        assert_eq!(to_p256(&r), -p.double());
    }

    #[test]
    fn ct_routines_handle_edge_scalars() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let base = ProjectivePoint::GENERATOR * crate::arith::random_nonzero_scalar(&mut rng);
        let ba = from_p256(&base);
        let fixed = FixedBaseTable::new(&ba);
        let comb3 = CombTable::<3>::new(&ba);
        let comb4 = CombTable::<4>::new(&ba);
        let comb5 = CombTable::<5>::new(&ba);
        for k in edge_scalars() {
            let expect = base * k;
            assert_eq!(to_p256(&fixed.mul_ct(&k)), expect, "fixed {k:?}");
            assert_eq!(to_p256(&fixed.mul_vartime(&k)), expect, "fixed vt {k:?}");
            assert_eq!(to_p256(&comb3.mul_ct(&k)), expect, "comb3 {k:?}");
            assert_eq!(to_p256(&comb4.mul_ct(&k)), expect, "comb4 {k:?}");
            assert_eq!(to_p256(&comb5.mul_ct(&k)), expect, "comb5 {k:?}");
            let [a, b] = comb5.mul_many_ct(&[k, -k]);
            assert_eq!(to_p256(&a), expect, "comb5 many {k:?}");
            assert_eq!(to_p256(&b), -expect, "comb5 many neg {k:?}");
            assert_eq!(
                to_p256(&lincomb_ct(&[ba], &[k])),
                expect,
                "lincomb_ct {k:?}"
            );
            assert_eq!(
                to_p256(&lincomb_vartime(&[ba], &[k])),
                expect,
                "lincomb_vartime {k:?}"
            );
            let [v] = lincomb_many_validated_ct([&[ba][..]], &[k]);
            assert_eq!(to_p256(&v), expect, "validated {k:?}");
        }
    }

    #[test]
    fn validated_lincomb_several_points_edge_scalars() {
        // Pairwise distinct, unrelated points (the routine's precondition)
        // with scalars drawn from the edge cases, zeros included: a set in
        // which all but one scalar is zero is the one-point case again.
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let edges = edge_scalars();
        let pick = |rng: &mut ChaCha20Rng| {
            let mut b = [0u8; 4];
            rand_core::RngCore::fill_bytes(rng, &mut b);
            let i = u32::from_le_bytes(b) as usize;
            if i.is_multiple_of(4) {
                crate::arith::random_nonzero_scalar(rng)
            } else {
                edges[i % edges.len()]
            }
        };
        for t in 1..=4 {
            for round in 0..40u32 {
                let pts: Vec<ProjectivePoint> = (0..2 * t)
                    .map(|_| {
                        ProjectivePoint::GENERATOR * crate::arith::random_nonzero_scalar(&mut rng)
                    })
                    .collect();
                let aff: Vec<Affine> = pts.iter().map(from_p256).collect();
                let mut ks: Vec<Scalar> = (0..t).map(|_| pick(&mut rng)).collect();
                if round.is_multiple_of(3) {
                    // Only one non-zero scalar.
                    for k in ks.iter_mut().skip(1) {
                        *k = Scalar::ZERO;
                    }
                }
                let expect = |set: &[ProjectivePoint]| -> ProjectivePoint {
                    set.iter().zip(&ks).map(|(p, k)| *p * k).sum()
                };
                let [a, b] = lincomb_many_validated_ct([&aff[..t], &aff[t..]], &ks);
                assert_eq!(to_p256(&a), expect(&pts[..t]), "t={t} {ks:?}");
                assert_eq!(to_p256(&b), expect(&pts[t..]), "t={t} {ks:?}");
                assert_eq!(to_p256(&lincomb_ct(&aff[..t], &ks)), expect(&pts[..t]));
            }
        }
    }

    #[test]
    fn zeroize_clears_every_coordinate() {
        let zero = FieldBytes::default();
        let mut j = Jacobian::from(Affine::generator()).double();
        let mut a = j.to_affine().unwrap();
        let mut r = Raw::from_affine(&a);
        assert!(j.z.to_repr() != zero && a.x.to_repr() != zero && r.0 != [0; 8]);
        j.zeroize();
        a.zeroize();
        r.zeroize();
        for c in [j.x, j.y, j.z, a.x, a.y] {
            assert_eq!(c.to_repr(), zero);
        }
        assert_eq!(r.0, [0u64; 8]);
        assert!(bool::from(j.is_identity()));
    }

    #[test]
    fn batch_conversion_handles_identities() {
        let g = Jacobian::from(Affine::generator());
        let pts = [g, Jacobian::IDENTITY, g.double()];
        let out = batch_to_affine(&pts);
        assert_eq!(out[0], Some(Affine::generator()));
        assert_eq!(out[1], None);
        assert_eq!(out[2], g.double().to_affine());
        let _ = ProjectivePoint::GENERATOR.to_affine();
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::hint::black_box;
    use std::time::Instant;

    fn time<F: FnMut()>(name: &str, n: u32, mut f: F) {
        for _ in 0..n / 10 + 1 {
            f();
        }
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        println!(
            "{name:32} {:10.2} us",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
    }

    #[test]
    #[ignore = "timing; run with --release --nocapture"]
    fn primitive_timings() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let k = crate::arith::random_nonzero_scalar(&mut rng);
        let k2 = crate::arith::random_nonzero_scalar(&mut rng);
        let g = Affine::generator();
        let p = mul_ct(&g, &k).to_affine().unwrap();
        let q = mul_ct(&g, &k2).to_affine().unwrap();
        let pj = Jacobian::from(p).double();
        time("fe mul", 1_000_000, || {
            black_box(black_box(p.x) * black_box(q.x));
        });
        time("fe square", 1_000_000, || {
            black_box(black_box(p.x).square());
        });
        time("fe add", 1_000_000, || {
            black_box(black_box(p.x) + black_box(q.x));
        });
        time("fe invert", 20_000, || {
            black_box(black_box(p.x).invert().unwrap());
        });
        time("jac double", 200_000, || {
            black_box(black_box(pj).double());
        });
        time("jac madd ct", 200_000, || {
            black_box(black_box(pj).add_affine_ct(&q, Choice::from(0)));
        });
        time("jac madd complete ct", 200_000, || {
            black_box(black_box(pj).add_affine_complete_ct(&q, Choice::from(0)));
        });
        time("jac add vartime", 200_000, || {
            black_box(black_box(pj).add_vartime(&pj.double()));
        });
        time("comb4 build", 2_000, || {
            black_box(CombTable::<4>::new(black_box(&p)));
        });
        let comb = CombTable::<4>::new(&p);
        time("comb4 mul_ct", 2_000, || {
            black_box(comb.mul_ct(black_box(&k)));
        });
        time("comb5 build", 2_000, || {
            black_box(CombTable::<5>::new(black_box(&p)));
        });
        let comb5 = CombTable::<5>::new(&p);
        time("comb5 mul_ct", 2_000, || {
            black_box(comb5.mul_ct(black_box(&k)));
        });
        time("fixed G mul_ct", 5_000, || {
            black_box(crate::arith::mul_g(black_box(&k)));
        });
        time("fixed G mul_vartime", 5_000, || {
            black_box(crate::arith::mul_g_vartime(black_box(&k)));
        });
        time("lincomb_ct 2", 1_000, || {
            black_box(lincomb_ct(&[p, q], black_box(&[k, k2])));
        });
        time("lincomb_vartime 1", 1_000, || {
            black_box(lincomb_vartime(&[p], black_box(&[k])));
        });
        time("lincomb_vartime 2", 1_000, || {
            black_box(lincomb_vartime(&[p, q], black_box(&[k, k2])));
        });
        time("lincomb_vartime 7", 1_000, || {
            black_box(lincomb_vartime(
                &[p, q, p, q, p, q, p],
                black_box(&[k, k2, k, k2, k, k2, k]),
            ));
        });
        time("to_affine", 20_000, || {
            black_box(black_box(pj).to_affine());
        });
        time("compress", 200_000, || {
            black_box(black_box(p).to_compressed());
        });
    }
}

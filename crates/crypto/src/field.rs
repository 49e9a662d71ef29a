//! The P-256 base field `GF(p)`, `p = 2^256 - 2^224 + 2^192 + 2^96 - 1`,
//! on fiat-crypto's `p256_64` (word-by-word Montgomery arithmetic on four
//! 64-bit limbs).
//!
//! Why: the curve code in [`crate::ec`] spends most of its time in field
//! multiplications and additions. `p256` 0.14's field goes through
//! crypto-bigint's generic multiplication and Montgomery reduction and
//! out-of-line modular additions; fiat-crypto's routines are specialised
//! straight-line code for this prime, generated together with a machine-checked
//! proof that they compute the field operations (and branch-free by
//! construction). This module only adds the glue: encodings, the inversion
//! exponent chain and the `subtle` / `zeroize` traits. It provides exactly
//! what `ec` uses, and is cross-checked against `p256`'s field in the tests.
//!
//! Invariant (fiat-crypto's precondition and postcondition for every
//! routine): a [`FieldElement`] holding the value `a` stores the limbs of
//! `a * 2^256 mod p` (Montgomery form), little-endian and fully reduced,
//! i.e. `< p`. Hence the representation is unique (equality is limb
//! equality), zero is all-zero limbs (a zeroized element is `ZERO`), and
//! elements only enter through [`FieldElement::from_repr`], which rejects
//! encodings `>= p` before converting.
//!
//! Constant time: no routine branches on or indexes by an element's value.

use core::fmt;
use core::ops::{Add, Mul, MulAssign, Neg, Sub};

use fiat_crypto::p256_64::{
    fiat_p256_add, fiat_p256_from_montgomery, fiat_p256_montgomery_domain_field_element as Mont,
    fiat_p256_mul, fiat_p256_non_montgomery_domain_field_element as Plain, fiat_p256_nonzero,
    fiat_p256_opp, fiat_p256_selectznz, fiat_p256_set_one, fiat_p256_square, fiat_p256_sub,
    fiat_p256_subborrowx_u64, fiat_p256_to_montgomery,
};
use p256::FieldBytes;
use p256::elliptic_curve::subtle::{Choice, ConditionallySelectable, ConstantTimeEq, CtOption};
use zeroize::Zeroize;

/// `p`, little-endian limbs.
const MODULUS: [u64; 4] = [
    0xffff_ffff_ffff_ffff,
    0x0000_0000_ffff_ffff,
    0x0000_0000_0000_0000,
    0xffff_ffff_0000_0001,
];

/// An element of the P-256 base field, in Montgomery form (see the module
/// documentation for the invariant).
#[derive(Clone, Copy, Zeroize)]
pub(crate) struct FieldElement([u64; 4]);

impl FieldElement {
    pub(crate) const ZERO: Self = Self([0; 4]);

    pub(crate) const ONE: Self = {
        let mut one = Mont([0; 4]);
        fiat_p256_set_one(&mut one);
        Self(one.0)
    };

    #[inline(always)]
    fn mont(&self) -> Mont {
        Mont(self.0)
    }

    /// The canonical value `a` (not in Montgomery form), little-endian limbs.
    #[inline(always)]
    fn to_plain(self) -> [u64; 4] {
        let mut out = Plain([0; 4]);
        fiat_p256_from_montgomery(&mut out, &self.mont());
        out.0
    }

    /// Big-endian canonical encoding; `None` (in constant time) unless the
    /// encoded integer is `< p`.
    pub(crate) fn from_repr(bytes: FieldBytes) -> CtOption<Self> {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let start = 32 - 8 * (i + 1);
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[start..start + 8]);
            *limb = u64::from_be_bytes(word);
        }
        // limbs - p borrows iff limbs < p.
        let mut borrow = 0u8;
        for (limb, m) in limbs.iter().zip(MODULUS) {
            let mut diff = 0u64;
            let mut out_borrow = 0u8;
            fiat_p256_subborrowx_u64(&mut diff, &mut out_borrow, borrow, *limb, m);
            borrow = out_borrow;
        }
        let valid = Choice::from(borrow);
        // Keep `to_montgomery`'s precondition (`< p`) for rejected input.
        let mut reduced = [0u64; 4];
        fiat_p256_selectznz(&mut reduced, borrow, &[0; 4], &limbs);
        let mut out = Mont([0; 4]);
        fiat_p256_to_montgomery(&mut out, &Plain(reduced));
        CtOption::new(Self(out.0), valid)
    }

    /// Big-endian canonical encoding.
    pub(crate) fn to_repr(self) -> FieldBytes {
        let plain = self.to_plain();
        let mut out = FieldBytes::default();
        for (i, limb) in plain.iter().enumerate() {
            let start = 32 - 8 * (i + 1);
            out[start..start + 8].copy_from_slice(&limb.to_be_bytes());
        }
        out
    }

    /// Whether the canonical value is odd.
    pub(crate) fn is_odd(&self) -> Choice {
        #[allow(clippy::cast_possible_truncation)]
        Choice::from((self.to_plain()[0] & 1) as u8)
    }

    pub(crate) fn is_zero(&self) -> Choice {
        let mut any = 0u64;
        fiat_p256_nonzero(&mut any, &self.0);
        any.ct_eq(&0)
    }

    #[inline(always)]
    pub(crate) fn square(&self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_p256_square(&mut out, &self.mont());
        Self(out.0)
    }

    #[inline(always)]
    pub(crate) fn double(&self) -> Self {
        *self + *self
    }

    /// `self^(2^n)`.
    fn sqn(&self, n: usize) -> Self {
        let mut out = *self;
        for _ in 0..n {
            out = out.square();
        }
        out
    }

    /// `1 / self` (`None` for zero): Fermat, `self^(p - 2)` with a fixed
    /// addition chain (255 squarings, 12 multiplications), so the
    /// sequence of operations does not depend on the value.
    pub(crate) fn invert(&self) -> CtOption<Self> {
        let a = *self;
        let t111 = a * (a * a.square()).square();
        let t111111 = t111 * t111.sqn(3);
        let x15 = (t111111.sqn(6) * t111111).sqn(3) * t111;
        let x16 = x15.square() * a;
        let i53 = (x16.sqn(16) * x16).sqn(15);
        let x47 = x15 * i53;
        let inv = (x47 * ((i53.sqn(17) * a).sqn(143) * x47).sqn(47)).sqn(2) * a;
        CtOption::new(inv, !self.is_zero())
    }
}

impl fmt::Debug for FieldElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldElement(0x")?;
        for b in self.to_repr().iter() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl ConditionallySelectable for FieldElement {
    #[inline(always)]
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        let mut out = [0u64; 4];
        fiat_p256_selectznz(&mut out, choice.unwrap_u8(), &a.0, &b.0);
        Self(out)
    }
}

impl ConstantTimeEq for FieldElement {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0[..].ct_eq(&other.0[..])
    }
}

impl Add for FieldElement {
    type Output = Self;
    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_p256_add(&mut out, &self.mont(), &rhs.mont());
        Self(out.0)
    }
}

impl Sub for FieldElement {
    type Output = Self;
    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_p256_sub(&mut out, &self.mont(), &rhs.mont());
        Self(out.0)
    }
}

impl Mul for FieldElement {
    type Output = Self;
    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_p256_mul(&mut out, &self.mont(), &rhs.mont());
        Self(out.0)
    }
}

impl MulAssign for FieldElement {
    #[inline(always)]
    fn mul_assign(&mut self, rhs: Self) {
        *self = *self * rhs;
    }
}

impl Neg for FieldElement {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_p256_opp(&mut out, &self.mont());
        Self(out.0)
    }
}

/// Every routine against `p256`'s field, on edge and random values.
#[cfg(test)]
mod tests {
    use super::FieldElement as Fe;
    use p256::elliptic_curve::PrimeField;
    use p256::elliptic_curve::hazmat::FieldArithmetic;
    use p256::elliptic_curve::subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
    use p256::{FieldBytes, NistP256};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use zeroize::Zeroize;

    type Ref = <NistP256 as FieldArithmetic>::FieldElement;

    /// `base - k` on big-endian 256-bit integers.
    fn be_minus(base: &[u8; 32], k: u64) -> [u8; 32] {
        let mut out = *base;
        let mut borrow = k;
        for b in out.iter_mut().rev() {
            let (v, o1) = b.overflowing_sub(u8::try_from(borrow & 0xff).unwrap());
            *b = v;
            borrow = (borrow >> 8) + u64::from(o1);
        }
        out
    }

    fn p_bytes() -> [u8; 32] {
        hex::decode("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff")
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Encodings: edge cases below and above `p`, then random ones (among
    /// them some with the top bits set, where rejection happens).
    fn encodings() -> Vec<[u8; 32]> {
        let p = p_bytes();
        let ones = [0xffu8; 32];
        let mut v: Vec<[u8; 32]> = Vec::new();
        for k in 0u64..4 {
            let mut small = [0u8; 32];
            small[31] = u8::try_from(k).unwrap();
            v.push(small);
        }
        for k in 1u64..=4 {
            v.push(be_minus(&p, k)); // p - k
        }
        v.push(p); // p: rejected
        for k in 0u64..4 {
            v.push(be_minus(&ones, k)); // 2^256 - 1 - k: rejected
        }
        // p + 1 (rejected), 2^255, 2^255 - 1, 2^224, 2^192 - 1, 2^96 - 1.
        let mut p_plus_1 = p;
        for b in p_plus_1.iter_mut().rev() {
            let (nb, carry) = b.overflowing_add(1);
            *b = nb;
            if !carry {
                break;
            }
        }
        v.push(p_plus_1);
        let mut top = [0u8; 32];
        top[0] = 0x80;
        v.push(top);
        v.push(be_minus(&top, 1));
        for bits in [224usize, 192, 96, 64, 32] {
            let mut b = [0u8; 32];
            b[31 - bits / 8] = 1;
            v.push(b);
            v.push(be_minus(&b, 1));
        }
        let mut rng = ChaCha20Rng::seed_from_u64(256);
        for i in 0..300 {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            if i % 5 == 0 {
                // Top limb at or just above p's: 0xffffffff0000000x...
                b[..4].copy_from_slice(&[0xff; 4]);
                b[4..7].copy_from_slice(&[0; 3]);
                b[7] &= 0x03;
            }
            v.push(b);
        }
        v
    }

    fn pair(bytes: &[u8; 32]) -> Option<(Fe, Ref)> {
        let ours = Fe::from_repr(FieldBytes::from(*bytes)).into_option();
        let theirs = Ref::from_repr(FieldBytes::from(*bytes)).into_option();
        assert_eq!(ours.is_some(), theirs.is_some(), "from_repr {bytes:02x?}");
        let (o, t) = (ours?, theirs?);
        assert_eq!(o.to_repr(), t.to_repr(), "to_repr {bytes:02x?}");
        assert_eq!(o.to_repr(), FieldBytes::from(*bytes));
        Some((o, t))
    }

    fn same(o: Fe, t: Ref, what: &str) {
        assert_eq!(o.to_repr(), t.to_repr(), "{what}");
    }

    #[test]
    fn constants_match() {
        same(Fe::ZERO, Ref::ZERO, "zero");
        same(Fe::ONE, Ref::ONE, "one");
        let mut z = Fe::ONE;
        z.zeroize();
        assert!(bool::from(z.is_zero() & z.ct_eq(&Fe::ZERO)));
    }

    #[test]
    fn from_repr_rejects_p_and_above() {
        let p = p_bytes();
        assert!(bool::from(Fe::from_repr(p.into()).is_none()));
        assert!(bool::from(Fe::from_repr([0xff; 32].into()).is_none()));
        assert!(bool::from(Fe::from_repr(be_minus(&p, 1).into()).is_some()));
        let mut rejected = 0;
        for b in encodings() {
            if pair(&b).is_none() {
                rejected += 1;
            }
        }
        assert!(rejected >= 10, "edge and crafted inputs >= p: {rejected}");
    }

    #[test]
    fn unary_routines_match() {
        for b in encodings() {
            let Some((o, t)) = pair(&b) else { continue };
            same(-o, -t, "neg");
            same(o.square(), t.square(), "square");
            same(o.double(), t.double(), "double");
            assert_eq!(bool::from(o.is_zero()), bool::from(t.is_zero()), "is_zero");
            assert_eq!(bool::from(o.is_odd()), bool::from(t.is_odd()), "is_odd");
            let (oi, ti) = (o.invert().into_option(), t.invert().into_option());
            assert_eq!(oi.is_some(), ti.is_some(), "invert of zero");
            if let (Some(oi), Some(ti)) = (oi, ti) {
                same(oi, ti, "invert");
                same(oi * o, Ref::ONE, "invert * self");
            }
            let dbg = format!("{o:?}");
            assert!(dbg.ends_with(&format!("{})", hex::encode(b))), "{dbg}");
        }
    }

    #[test]
    fn binary_routines_match() {
        let vals: Vec<(Fe, Ref)> = encodings().iter().filter_map(pair).collect();
        for (a, (ao, at)) in vals.iter().enumerate() {
            for (bo, bt) in vals.iter().skip(a % 3).step_by(3) {
                same(*ao * *bo, *at * *bt, "mul");
                same(*ao + *bo, *at + *bt, "add");
                same(*ao - *bo, *at - *bt, "sub");
                let mut m = *ao;
                m *= *bo;
                same(m, *at * *bt, "mul_assign");
                assert_eq!(bool::from(ao.ct_eq(bo)), bool::from(at.ct_eq(bt)), "ct_eq");
                for c in [0u8, 1] {
                    same(
                        Fe::conditional_select(ao, bo, Choice::from(c)),
                        Ref::conditional_select(at, bt, Choice::from(c)),
                        "conditional_select",
                    );
                }
            }
        }
    }
}

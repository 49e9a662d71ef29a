//! Re-encryption: capsule fragments (cfrags), their proof of correct
//! re-encryption, and decapsulation from `t` cfrags.

use core::fmt;

use p256::Scalar;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::arith::{self, POINT_LEN, Point, SCALAR_LEN, SecretPoint};
use crate::capsule::{Capsule, KemKey};
use crate::dst;
use crate::ec::{self, Affine, CombTable, Jacobian};
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SIGNATURE_LEN, SecretKey, Signature, VerifyingKey};
use crate::kfrag::{self, KFRAG_ID_LEN, VerifiedKeyFrag};

/// A capsule fragment: `E1 = rk E`, `V1 = rk V`, plus a non-interactive
/// proof that they were computed with the share committed to in the
/// owner-signed kfrag.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CapsuleFrag {
    pub(crate) e1: Point,
    pub(crate) v1: Point,
    pub(crate) kfrag_id: [u8; KFRAG_ID_LEN],
    pub(crate) precursor: Point,
    pub(crate) proof: ReencryptionProof,
}

/// Chaum-Pedersen style proof that `log_E(E1) = log_V(V1) = log_U(U1)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ReencryptionProof {
    pub(crate) e2: Point,
    pub(crate) v2: Point,
    /// `U1 = rk U`, the kfrag commitment.
    pub(crate) u1: Point,
    pub(crate) u2: Point,
    pub(crate) z: Scalar,
    pub(crate) kfrag_signature: Signature,
}

impl CapsuleFrag {
    /// Length of [`CapsuleFrag::to_bytes`]:
    /// `E1 || V1 || kfrag_id || precursor || E2 || V2 || U1 || U2 || z || kfrag_signature`.
    pub const LEN: usize = 7 * POINT_LEN + KFRAG_ID_LEN + SCALAR_LEN + SIGNATURE_LEN;

    /// Fixed-length encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let mut at = 0;
        for part in [
            &self.e1.bytes[..],
            &self.v1.bytes,
            &self.kfrag_id,
            &self.precursor.bytes,
            &self.proof.e2.bytes,
            &self.proof.v2.bytes,
            &self.proof.u1.bytes,
            &self.proof.u2.bytes,
            &arith::scalar_to_bytes(&self.proof.z),
            &self.proof.kfrag_signature.1,
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// Decodes a cfrag; the result still has to be [verified](Self::verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "cfrag";
        if bytes.len() != Self::LEN {
            return Err(Error::Malformed(W));
        }
        let mut rest = bytes;
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let e1 = Point::from_bytes(take(POINT_LEN), W)?;
        let v1 = Point::from_bytes(take(POINT_LEN), W)?;
        let kfrag_id: [u8; KFRAG_ID_LEN] = take(KFRAG_ID_LEN).try_into().expect("split length");
        let precursor = Point::from_bytes(take(POINT_LEN), W)?;
        let e2 = Point::from_bytes(take(POINT_LEN), W)?;
        let v2 = Point::from_bytes(take(POINT_LEN), W)?;
        let u1 = Point::from_bytes(take(POINT_LEN), W)?;
        let u2 = Point::from_bytes(take(POINT_LEN), W)?;
        let z = arith::scalar_from_bytes(take(SCALAR_LEN), W)?;
        let kfrag_signature =
            Signature::from_bytes(take(SIGNATURE_LEN)).map_err(|_| Error::Malformed(W))?;
        Ok(Self {
            e1,
            v1,
            kfrag_id,
            precursor,
            proof: ReencryptionProof {
                e2,
                v2,
                u1,
                u2,
                z,
                kfrag_signature,
            },
        })
    }

    /// The id of the kfrag this cfrag was produced with.
    pub fn kfrag_id(&self) -> &[u8; KFRAG_ID_LEN] {
        &self.kfrag_id
    }

    /// The precursor `X_A` of the kfrag sharing this cfrag comes from (SEC1
    /// compressed): only cfrags of one sharing combine, so a grantee whose
    /// nodes hold shares of two grants (one node missed a re-grant) groups
    /// cfrags by it.
    pub fn precursor(&self) -> &[u8; POINT_LEN] {
        &self.precursor.bytes
    }

    /// Checks the owner's kfrag signature (binding the commitment `U1`, the
    /// precursor and both public keys) and the proof of re-encryption of
    /// `capsule`. All inputs are public, so this runs in variable time.
    pub fn verify(
        self,
        capsule: &Capsule,
        verifying_key: &VerifyingKey,
        owner_pk: &PublicKey,
        grantee_pk: &PublicKey,
    ) -> Result<VerifiedCapsuleFrag> {
        let msg = kfrag::signature_message(
            &self.kfrag_id,
            &self.proof.u1,
            &self.precursor,
            owner_pk,
            grantee_pk,
        );
        verifying_key.verify(&msg, &self.proof.kfrag_signature)?;

        let p = &self.proof;
        let h = proof_challenge(capsule, &self.e1, &self.v1, &p.e2, &p.v2, &p.u1, &p.u2);
        if !proof_holds(capsule, &self, &h) {
            return Err(Error::VerificationFailed);
        }
        Ok(VerifiedCapsuleFrag { cfrag: self })
    }
}

impl fmt::Debug for CapsuleFrag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapsuleFrag")
            .field("e1", &self.e1)
            .field("v1", &self.v1)
            .field("kfrag_id", &arith::hex_string(&self.kfrag_id))
            .field("precursor", &self.precursor)
            .field("proof", &self.proof)
            .finish()
    }
}

/// A cfrag whose proof and kfrag signature have been checked (or that was
/// just produced by [`reencrypt`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VerifiedCapsuleFrag {
    pub(crate) cfrag: CapsuleFrag,
}

impl VerifiedCapsuleFrag {
    /// Same encoding as [`CapsuleFrag::to_bytes`].
    pub fn to_bytes(&self) -> [u8; CapsuleFrag::LEN] {
        self.cfrag.to_bytes()
    }

    /// Decodes and verifies in one step (see [`CapsuleFrag::verify`]).
    pub fn from_bytes(
        bytes: &[u8],
        capsule: &Capsule,
        verifying_key: &VerifyingKey,
        owner_pk: &PublicKey,
        grantee_pk: &PublicKey,
    ) -> Result<Self> {
        CapsuleFrag::from_bytes(bytes)?.verify(capsule, verifying_key, owner_pk, grantee_pk)
    }

    /// See [`CapsuleFrag::precursor`].
    pub fn precursor(&self) -> &[u8; POINT_LEN] {
        self.cfrag.precursor()
    }

    /// Drops the "verified" mark, e.g. to send the cfrag to the grantee.
    pub fn unverify(self) -> CapsuleFrag {
        self.cfrag
    }
}

/// Checks `z E = E2 + h E1`, `z V = V2 + h V1` and `z U = U2 + h U1` at
/// once, as `(zE - E2 - hE1) + r1 (zV - V2 - hV1) + r2 (zU - U2 - hU1) = 0`
/// with 128-bit weights `r1, r2` derived by hashing `h` (which covers
/// every point) and `z`. A cfrag that fails any single equation passes the
/// combined one with probability about 2^-128 per hash evaluation. Public
/// data only: variable time.
fn proof_holds(capsule: &Capsule, cfrag: &CapsuleFrag, h: &Scalar) -> bool {
    let p = &cfrag.proof;
    let z = p.z;
    let mut hasher = Sha256::new();
    hasher.update(b"SESPHR-V1-CFRAG-BATCH-WEIGHTS");
    hasher.update(arith::scalar_to_bytes(h));
    hasher.update(arith::scalar_to_bytes(&z));
    let digest: [u8; 32] = hasher.finalize().into();
    let r1 = Scalar::from(u128::from_be_bytes(
        digest[..16].try_into().expect("16 bytes"),
    ));
    let r2 = Scalar::from(u128::from_be_bytes(
        digest[16..].try_into().expect("16 bytes"),
    ));
    let points = [
        capsule.e.affine,
        capsule.v.affine,
        cfrag.e1.affine.neg(),
        cfrag.v1.affine.neg(),
        p.u1.affine.neg(),
        p.v2.affine.neg(),
        p.u2.affine.neg(),
    ];
    let scalars = [z, z * r1, *h, *h * r1, *h * r2, r1, r2];
    let sum = ec::lincomb_vartime(&points, &scalars)
        .add_vartime(&arith::mul_u_vartime(&(z * r2)))
        .add_affine_vartime(&p.e2.affine.neg());
    bool::from(sum.is_identity())
}

/// `h = H2S(CFRAG_PROOF_DST, E || E1 || E2 || V || V1 || V2 || U || U1 || U2)`.
pub(crate) fn proof_challenge(
    capsule: &Capsule,
    e1: &Point,
    v1: &Point,
    e2: &Point,
    v2: &Point,
    u1: &Point,
    u2: &Point,
) -> Scalar {
    let u = arith::generator_u();
    arith::hash_to_scalar(
        dst::CFRAG_PROOF_DST,
        &[
            &capsule.e.bytes,
            &e1.bytes,
            &e2.bytes,
            &capsule.v.bytes,
            &v1.bytes,
            &v2.bytes,
            &u.bytes,
            &u1.bytes,
            &u2.bytes,
        ],
    )
}

/// Re-encrypts `capsule` with one kfrag (run by a proxy).
pub fn reencrypt(
    rng: &mut (impl CryptoRng + ?Sized),
    capsule: &Capsule,
    kfrag: &VerifiedKeyFrag,
) -> VerifiedCapsuleFrag {
    let mut t = arith::random_nonzero_scalar(rng);
    let out = reencrypt_with(&t, capsule, kfrag);
    t.zeroize();
    out
}

/// Deterministic core of [`reencrypt`] with the proof nonce `t` given.
pub(crate) fn reencrypt_with(
    t: &Scalar,
    capsule: &Capsule,
    kfrag: &VerifiedKeyFrag,
) -> VerifiedCapsuleFrag {
    let kfrag = &kfrag.kfrag;
    let rk = &kfrag.rk;
    // Every capsule is valid, V = s G - h E, so multiples of V come from
    // one comb table for E plus fixed-base multiples of G:
    //   k V = (k s) G + (-k h) E.
    // Four scalars then share a single table (see ec::CombTable).
    let h_capsule = capsule.challenge();
    let e = CombTable::<5>::new(&capsule.e.affine);
    let mut scalars = [*rk, *t, -(*rk * h_capsule), -(*t * h_capsule)];
    let [e1, e2, rk_h_e, t_h_e] = e.mul_many_ct(&scalars);
    let mut rk_s = *rk * capsule.s;
    let mut t_s = *t * capsule.s;
    let v1 = arith::mul_g(&rk_s).add_complete_ct(&rk_h_e);
    let v2 = arith::mul_g(&t_s).add_complete_ct(&t_h_e);
    scalars.zeroize();
    rk_s.zeroize();
    t_s.zeroize();
    let u2 = arith::mul_u(t);
    let [e1, v1, e2, v2, u2] = Point::batch_from_jacobian(&[e1, v1, e2, v2, u2])
        .expect("non-zero multiples of prime-order points are not the identity");
    let u1 = kfrag.commitment;
    let h = proof_challenge(capsule, &e1, &v1, &e2, &v2, &u1, &u2);
    let z = *t + h * rk;
    VerifiedCapsuleFrag {
        cfrag: CapsuleFrag {
            e1,
            v1,
            kfrag_id: kfrag.id,
            precursor: kfrag.precursor,
            proof: ReencryptionProof {
                e2,
                v2,
                u1,
                u2,
                z,
                kfrag_signature: kfrag.signature,
            },
        },
    }
}

/// Recovers the KEM key as the grantee from at least `threshold` verified
/// cfrags of `capsule` (all made with kfrags of the same
/// [`generate_kfrags`](crate::generate_kfrags) call). Fewer cfrags, mixed
/// kfrag sets, a different capsule or the wrong key all give the same opaque
/// [`Error::DecryptionFailed`].
pub fn decapsulate_reencrypted(
    grantee_sk: &SecretKey,
    owner_pk: &PublicKey,
    capsule: &Capsule,
    cfrags: &[VerifiedCapsuleFrag],
) -> Result<KemKey> {
    let first = cfrags.first().ok_or(Error::DecryptionFailed)?;
    let precursor = first.cfrag.precursor;
    if cfrags.iter().any(|c| c.cfrag.precursor != precursor) {
        return Err(Error::DecryptionFailed);
    }
    let grantee_pk = grantee_sk.public_key();
    let dh = Zeroizing::new(ec::mul_ct(&precursor.affine, &grantee_sk.scalar));
    let dh = SecretPoint::from_jacobian(&dh).ok_or(Error::DecryptionFailed)?;
    let mut d = kfrag::shared_secret(&precursor, &grantee_pk, &dh);
    let mut xs: Vec<Scalar> = cfrags
        .iter()
        .map(|c| kfrag::polynomial_arg(&precursor, &grantee_pk, &dh, &c.cfrag.kfrag_id))
        .collect();
    drop(dh);
    let coefficients = lagrange_at_zero(&xs);
    xs.zeroize();
    let mut coefficients = coefficients.ok_or(Error::DecryptionFailed)?;
    for c in &mut coefficients {
        *c *= d;
    }
    d.zeroize();

    // W = sum c_i E1_i = a E,  K = sum c_i (E1_i + V1_i) = a (E + V).
    // Cfrags with equal (E1, V1) (equal shares: every share is equal when
    // t = 1) are merged first, so the incomplete additions below never see
    // repeated points (see ec::lincomb_many_validated_ct).
    let mut merged: Vec<(&CapsuleFrag, Scalar)> = Vec::with_capacity(cfrags.len());
    for (c, l) in cfrags.iter().zip(&coefficients) {
        let c = &c.cfrag;
        match merged
            .iter_mut()
            .find(|(m, _)| m.e1.bytes == c.e1.bytes && m.v1.bytes == c.v1.bytes)
        {
            Some((_, acc)) => *acc += l,
            None => merged.push((c, *l)),
        }
    }
    coefficients.zeroize();
    let mut scalars: Vec<Scalar> = merged.iter().map(|(_, l)| *l).collect();
    let e1s: Vec<Affine> = merged.iter().map(|(c, _)| c.e1.affine).collect();
    let sums: Vec<Jacobian> = merged
        .iter()
        .map(|(c, _)| c.e1.jac().add_affine_vartime(&c.v1.affine))
        .collect();
    for (_, l) in &mut merged {
        l.zeroize();
    }
    let qs = ec::batch_to_affine(&sums)
        .into_iter()
        .collect::<Option<Vec<Affine>>>()
        .ok_or(Error::DecryptionFailed)?;
    let wk = Zeroizing::new(ec::lincomb_many_validated_ct([&e1s[..], &qs[..]], &scalars));
    scalars.zeroize();
    let mut wk = Zeroizing::new(Point::batch_from_jacobian(&wk).ok_or(Error::DecryptionFailed)?);
    let w = SecretPoint::take(&mut wk[0]);
    let k = SecretPoint::take(&mut wk[1]);

    // Check s A = h W + (K - W), i.e. (h - 1) W - s A + K = 0. Only the
    // public scalars h - 1 and s steer the variable-time combination.
    let h = capsule.challenge();
    let check = ec::lincomb_vartime(
        &[w.affine, owner_pk.affine().neg()],
        &[h - Scalar::ONE, capsule.s],
    )
    .add_affine_vartime(&k.affine);
    if !bool::from(check.is_identity()) {
        return Err(Error::DecryptionFailed);
    }
    Ok(KemKey::derive(&k, capsule))
}

/// Lagrange coefficients at 0 for the points `xs`:
/// `lambda_i = prod_{j != i} x_j / (x_j - x_i)`. `None` if two are equal.
pub(crate) fn lagrange_at_zero(xs: &[Scalar]) -> Option<Vec<Scalar>> {
    let n = xs.len();
    let mut nums = Vec::with_capacity(n);
    let mut dens = Vec::with_capacity(n);
    for (i, xi) in xs.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                num *= xj;
                den *= *xj - xi;
            }
        }
        nums.push(num);
        dens.push(den);
    }
    // Batch inversion: one (constant-time) inversion for all denominators.
    let mut prefix = Vec::with_capacity(n);
    let mut acc = Scalar::ONE;
    for den in &dens {
        prefix.push(acc);
        acc *= den;
    }
    let inv: Option<Scalar> = acc.invert().into();
    let mut inv = inv?;
    let mut out = vec![Scalar::ZERO; n];
    for i in (0..n).rev() {
        out[i] = nums[i] * inv * prefix[i];
        inv *= dens[i];
    }
    nums.zeroize();
    dens.zeroize();
    prefix.zeroize();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagrange_interpolates() {
        // f(x) = 5 + 3x + 2x^2, recover f(0) from 3 points.
        let f = |x: u64| Scalar::from(5 + 3 * x + 2 * x * x);
        let xs = [Scalar::from(2u64), Scalar::from(7u64), Scalar::from(11u64)];
        let ys = [f(2), f(7), f(11)];
        let l = lagrange_at_zero(&xs).unwrap();
        let at0: Scalar = l.iter().zip(ys).map(|(l, y)| *l * y).sum();
        assert_eq!(at0, Scalar::from(5u64));
        assert!(lagrange_at_zero(&[Scalar::ONE, Scalar::ONE]).is_none());
    }
}

//! Deterministic entry points behind the published test vectors
//! (`tests/vectors/*.json`). Not part of the stable API: every value that
//! the normal API draws from the RNG is passed in explicitly here, and a few
//! intermediate values are exposed so that other implementations can be
//! debugged step by step.

use p256::Scalar;
use rand_core::CryptoRng;

use crate::arith::{self, Point};
use crate::capsule::{self, Capsule, KemKey};
use crate::cfrag::{self, VerifiedCapsuleFrag};
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey, SigningKey};
use crate::kfrag::{self, KFRAG_ID_LEN, KeyFrag, VerifiedKeyFrag};
use crate::record::{DemKeySource, HeaderDraft, HeaderParts, NONCE_PREFIX_LEN};

fn scalar(bytes: &[u8; 32]) -> Result<Scalar> {
    arith::nonzero_scalar_from_bytes(bytes, "scalar")
}

/// The second generator `U` (SEC1 compressed).
pub fn generator_u() -> [u8; 33] {
    arith::generator_u().bytes
}

/// `H2S(dst, msg)` as 32 big-endian bytes.
pub fn hash_to_scalar(dst: &[u8], msg: &[u8]) -> [u8; 32] {
    arith::scalar_to_bytes(&arith::hash_to_scalar(dst, &[msg]))
}

/// A random non-zero scalar, as the normal API draws it.
pub fn random_scalar(rng: &mut (impl CryptoRng + ?Sized)) -> [u8; 32] {
    arith::scalar_to_bytes(&arith::random_nonzero_scalar(rng))
}

/// Encapsulation with explicit `r` and `u`; also returns the shared point
/// `K` and the capsule challenge `h`.
pub fn encapsulate_with(
    r: &[u8; 32],
    u: &[u8; 32],
    owner_pk: &PublicKey,
) -> Result<(Capsule, KemKey, [u8; 33], [u8; 32])> {
    let (r, u) = (scalar(r)?, scalar(u)?);
    let (capsule, key) = capsule::encapsulate_with(&r, &u, owner_pk);
    let shared = Point::from_jacobian(&crate::ec::mul_ct(owner_pk.affine(), &(r + u)))
        .ok_or(Error::DecryptionFailed)?;
    Ok((
        capsule,
        key,
        shared.bytes,
        arith::scalar_to_bytes(&capsule.challenge()),
    ))
}

/// `(precursor, dh_point, d)` for a precursor secret.
pub fn precursor_values(
    precursor_sk: &[u8; 32],
    grantee_pk: &PublicKey,
) -> Result<([u8; 33], [u8; 33], [u8; 32])> {
    let x = scalar(precursor_sk)?;
    let precursor = Point::from_jacobian(&arith::mul_g(&x)).ok_or(Error::DecryptionFailed)?;
    let dh = Point::from_jacobian(&crate::ec::mul_ct(grantee_pk.affine(), &x))
        .ok_or(Error::DecryptionFailed)?;
    let d = kfrag::shared_secret(&precursor, grantee_pk, &dh);
    Ok((precursor.bytes, dh.bytes, arith::scalar_to_bytes(&d)))
}

/// The Shamir share index `x_i` of a kfrag id.
pub fn share_index(
    precursor: &[u8; 33],
    grantee_pk: &PublicKey,
    dh: &[u8; 33],
    id: &[u8; KFRAG_ID_LEN],
) -> Result<[u8; 32]> {
    let p = Point::from_bytes(precursor, "precursor")?;
    let dh = Point::from_bytes(dh, "dh point")?;
    Ok(arith::scalar_to_bytes(&kfrag::polynomial_arg(
        &p, grantee_pk, &dh, id,
    )))
}

/// Kfrag generation with explicit precursor secret, coefficients
/// `f_1..f_{t-1}` and ids.
pub fn generate_kfrags_with(
    owner_sk: &SecretKey,
    grantee_pk: &PublicKey,
    signer: &SigningKey,
    precursor_sk: &[u8; 32],
    coefficients: &[[u8; 32]],
    ids: &[[u8; KFRAG_ID_LEN]],
) -> Result<Vec<VerifiedKeyFrag>> {
    let x = scalar(precursor_sk)?;
    let coefficients = coefficients
        .iter()
        .map(scalar)
        .collect::<Result<Vec<_>>>()?;
    kfrag::generate_kfrags_with(owner_sk, grantee_pk, signer, &x, &coefficients, ids, || {
        unreachable!("test-vector ids give non-zero share indices")
    })
}

/// The exact message signed for `kfrag`.
pub fn kfrag_signature_message(
    kfrag: &KeyFrag,
    owner_pk: &PublicKey,
    grantee_pk: &PublicKey,
) -> Vec<u8> {
    kfrag::signature_message(
        &kfrag.id,
        &kfrag.commitment,
        &kfrag.precursor,
        owner_pk,
        grantee_pk,
    )
}

/// Re-encryption with an explicit proof nonce `t`; also returns the proof
/// challenge `h`.
pub fn reencrypt_with(
    t: &[u8; 32],
    capsule: &Capsule,
    kfrag: &VerifiedKeyFrag,
) -> Result<(VerifiedCapsuleFrag, [u8; 32])> {
    let cfrag = cfrag::reencrypt_with(&scalar(t)?, capsule, kfrag);
    let c = &cfrag.cfrag;
    let p = &c.proof;
    let h = cfrag::proof_challenge(capsule, &c.e1, &c.v1, &p.e2, &p.v2, &p.u1, &p.u2);
    Ok((cfrag, arith::scalar_to_bytes(&h)))
}

/// Lagrange coefficients at 0 for share indices `xs`.
pub fn lagrange_coefficients(xs: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
    let xs = xs.iter().map(scalar).collect::<Result<Vec<_>>>()?;
    let l = cfrag::lagrange_at_zero(&xs).ok_or(Error::DecryptionFailed)?;
    Ok(l.iter().map(arith::scalar_to_bytes).collect())
}

/// An unsigned record header with an explicit nonce prefix (sign it with
/// [`HeaderDraft::sign`]: ECDSA here is deterministic, RFC 6979).
#[allow(clippy::too_many_arguments)]
pub fn header_with_nonce_prefix(
    record_id: &[u8],
    owner_id: &[u8],
    partition: &str,
    epoch: u32,
    key_source: DemKeySource,
    capsule: Capsule,
    segment_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
) -> Result<HeaderDraft> {
    HeaderDraft::from_parts(
        HeaderParts {
            record_id: record_id.to_vec(),
            owner_id: owner_id.to_vec(),
            partition: partition.to_owned(),
            epoch,
            key_source,
            capsule,
            segment_size,
        },
        nonce_prefix,
    )
}

/// Shamir split with an explicit set id and coefficients `[a_{k,0}, a_{k,1}]`
/// for `k = 1..t−1` (the threshold is one more than their number).
pub fn split_with(
    secret: &crate::MasterSecret,
    set_id: &[u8; crate::shamir::SET_ID_LEN],
    coefficients: &[[[u8; 32]; 2]],
    n: u8,
) -> Result<Vec<crate::shamir::Share>> {
    let coefficients = coefficients
        .iter()
        .map(|[a, b]| Ok([scalar(a)?, scalar(b)?]))
        .collect::<Result<Vec<_>>>()?;
    crate::shamir::split_with(secret, set_id, &coefficients, n)
}

/// Sealing a share with explicit `r` and `u` of its capsule; also returns
/// the KEM key and the AES-256-GCM key derived from it.
pub fn seal_share_with(
    r: &[u8; 32],
    u: &[u8; 32],
    recipient: &PublicKey,
    context: &crate::shamir::ShareContext,
    share: &crate::shamir::Share,
) -> Result<(Vec<u8>, KemKey, [u8; 32])> {
    let (r, u) = (scalar(r)?, scalar(u)?);
    let (capsule, kem_key) = capsule::encapsulate_with(&r, &u, recipient);
    let sealed = crate::shamir::seal_share_with(&capsule, &kem_key, context, share)?;
    let key = *crate::shamir::seal_key(&kem_key);
    Ok((sealed, kem_key, key))
}

//! RFC 9497 OPRF, ciphersuite `OPRF(P-256, SHA-256)`, base mode
//! (`modeOPRF = 0x00`).
//!
//! The client blinds its input, the server multiplies the blinded element
//! by its secret key without learning the input, and the client unblinds and
//! hashes the result. The output equals the direct PRF evaluation
//! `F(k, x) = SHA-256(I2OSP(len(x), 2) || x || I2OSP(33, 2) || SerializeElement(k * HashToGroup(x)) || "Finalize")`
//! that only the key holder can compute, so a client learns `F(k, x)` for
//! its own inputs only, one server round trip each, and the server can rate
//! limit brute-force guessing of low-entropy files.
//!
//! Byte-exact definitions (all from RFC 9497 §3, §4.3):
//!
//! ```text
//! contextString = "OPRFV1-" || 0x00 || "-P256-SHA256"
//! HashToGroup(x)    = hash_to_curve P256_XMD:SHA-256_SSWU_RO_ (RFC 9380),
//!                     DST = "HashToGroup-" || contextString
//! HashToScalar(x, DST) = hash_to_field(x, 1) over GF(n), expand_message_xmd
//!                     SHA-256, L = 48 bytes, i.e. OS2IP(expand(x, DST, 48)) mod n
//! SerializeElement  = SEC1 compressed point, 33 bytes (0x02/0x03 || x)
//! SerializeScalar   = 32-byte big-endian
//! DeriveKeyPair(seed[32], info):
//!     deriveInput = seed || I2OSP(len(info), 2) || info
//!     for counter in 0..=255:
//!         sk = HashToScalar(deriveInput || I2OSP(counter, 1),
//!                           DST = "DeriveKeyPair" || contextString)
//!         if sk != 0: return sk
//! Blind(input):    r <- random non-zero scalar;  blinded = r * HashToGroup(input)
//! BlindEvaluate:   evaluated = sk * blinded
//! Finalize:        N = r^-1 * evaluated
//!                  output = SHA-256(I2OSP(len(input), 2) || input ||
//!                                   I2OSP(33, 2) || SerializeElement(N) || "Finalize")
//! ```
//!
//! Deserialisation of a received element rejects anything but a canonical
//! 33-byte compressed point on the curve (the identity has no such
//! encoding). Inputs are at most 65535 bytes (their length is encoded on two
//! bytes).

use core::fmt;

use hash2curve::ExpandMsgXmd;
use p256::elliptic_curve::{
    Field, PrimeField,
    array::{Array, typenum::U48},
    group::{Group as _, GroupEncoding as _},
};
use p256::{AffinePoint, FieldBytes, NistP256, ProjectivePoint, Scalar};
use rand_core::CryptoRng;
// Blinds and server keys are drawn exactly like the PRE secrets.
use sesphr_crypto::random_nonzero_scalar;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// `modeOPRF`, the only RFC 9497 mode implemented here.
pub const MODE_OPRF: u8 = 0x00;
/// `contextString = "OPRFV1-" || I2OSP(modeOPRF, 1) || "-P256-SHA256"`.
pub const CONTEXT_STRING: &[u8] = b"OPRFV1-\x00-P256-SHA256";
/// DST of `HashToGroup`: `"HashToGroup-" || contextString`.
pub const HASH_TO_GROUP_DST: &[u8] = b"HashToGroup-OPRFV1-\x00-P256-SHA256";
/// DST of `HashToScalar`: `"HashToScalar-" || contextString`.
pub const HASH_TO_SCALAR_DST: &[u8] = b"HashToScalar-OPRFV1-\x00-P256-SHA256";
/// DST of `DeriveKeyPair`: `"DeriveKeyPair" || contextString` (no dash).
pub const DERIVE_KEY_PAIR_DST: &[u8] = b"DeriveKeyPairOPRFV1-\x00-P256-SHA256";

/// Length of a serialised group element (`Noe`): SEC1 compressed.
pub const ELEMENT_LEN: usize = 33;
/// Length of a serialised scalar (`Nsk`).
pub const SCALAR_LEN: usize = 32;
/// Length of the OPRF output (`Nh`).
pub const OUTPUT_LEN: usize = 32;
/// Length of the `DeriveKeyPair` seed (`Nseed`).
pub const SEED_LEN: usize = 32;
/// Longest OPRF input / key info, in bytes.
pub const MAX_INPUT_LEN: usize = u16::MAX as usize;

/// A blinded element sent by the client to the server.
pub type BlindedElement = [u8; ELEMENT_LEN];
/// An evaluated element returned by the server to the client.
pub type EvaluatedElement = [u8; ELEMENT_LEN];
/// The 32-byte OPRF output.
pub type OprfOutput = [u8; OUTPUT_LEN];

/// The server's OPRF secret key `skS` (a non-zero scalar). Zeroized on drop;
/// `Debug` is redacted.
#[derive(Clone)]
pub struct ServerKey {
    sk: Scalar,
}

impl ServerKey {
    /// RFC 9497 §3.2.1 `DeriveKeyPair(seed, info)` for mode `0x00`.
    ///
    /// `info` is at most 65535 bytes. Fails with [`Error::DeriveKeyPair`]
    /// if no non-zero scalar was found in 256 attempts (probability
    /// about 2^-32768).
    pub fn derive(seed: &[u8; SEED_LEN], info: &[u8]) -> Result<Self> {
        let info_len = u16::try_from(info.len())
            .map_err(|_| Error::InvalidParameter("key info must be at most 65535 bytes"))?;
        let info_len = info_len.to_be_bytes();
        for counter in 0u8..=255 {
            let sk = hash_to_scalar(&[seed, &info_len, info, &[counter]], &[DERIVE_KEY_PAIR_DST]);
            if !bool::from(sk.is_zero()) {
                return Ok(Self { sk });
            }
        }
        Err(Error::DeriveKeyPair)
    }

    /// A fresh uniformly random key (RFC 9497 §3.2 `GenerateKeyPair`).
    pub fn random(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        Self {
            sk: random_nonzero_scalar(rng),
        }
    }

    /// Decodes `SerializeScalar(skS)`: 32 big-endian bytes, canonical
    /// (`< n`) and non-zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            sk: nonzero_scalar_from_bytes(bytes, "OPRF server key")?,
        })
    }

    /// `SerializeScalar(skS)`.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        Zeroizing::new(self.sk.to_repr().into())
    }

    /// `SerializeElement(pkS)` with `pkS = skS * G`. Not needed in base
    /// mode, published for completeness (RFC 9497 test vectors list it for
    /// the verifiable modes only).
    pub fn public_key(&self) -> [u8; ELEMENT_LEN] {
        serialize_element(&(ProjectivePoint::GENERATOR * self.sk))
            .expect("a non-zero multiple of G is not the identity")
    }

    /// The secret scalar, for dealing threshold shares of it.
    pub(crate) fn scalar(&self) -> &Scalar {
        &self.sk
    }
}

impl Drop for ServerKey {
    fn drop(&mut self) {
        self.sk.zeroize();
    }
}

impl ZeroizeOnDrop for ServerKey {}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey(<redacted>)")
    }
}

/// The client's blinding scalar, kept between [`blind`] and [`finalize`].
/// Zeroized on drop; `Debug` is redacted. Use it for exactly one
/// [`finalize`].
pub struct BlindState {
    blind: Scalar,
}

impl Drop for BlindState {
    fn drop(&mut self) {
        self.blind.zeroize();
    }
}

impl ZeroizeOnDrop for BlindState {}

impl fmt::Debug for BlindState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindState(<redacted>)")
    }
}

/// Client step 1 (RFC 9497 §3.3.1 `Blind`): blinds `input` with a fresh
/// random scalar. Send the returned element to the server; keep the state
/// for [`finalize`].
///
/// Fails with [`Error::InvalidParameter`] if `input` is longer than 65535
/// bytes and [`Error::InvalidInput`] if it hashes to the identity.
pub fn blind(
    rng: &mut (impl CryptoRng + ?Sized),
    input: &[u8],
) -> Result<(BlindState, BlindedElement)> {
    blind_inner(random_nonzero_scalar(rng), input)
}

/// [`blind`] with a caller-chosen blinding scalar (32 big-endian bytes,
/// canonical, non-zero), for test vectors and cross-implementation tests.
///
/// Never use it in production: a predictable or reused blind lets the
/// server recognise the input.
pub fn blind_with_scalar(
    blind: &[u8; SCALAR_LEN],
    input: &[u8],
) -> Result<(BlindState, BlindedElement)> {
    blind_inner(nonzero_scalar_from_bytes(blind, "OPRF blind")?, input)
}

fn blind_inner(blind: Scalar, input: &[u8]) -> Result<(BlindState, BlindedElement)> {
    let state = BlindState { blind };
    let point = hash_to_group(input)?;
    let blinded = serialize_element(&(point * state.blind)).ok_or(Error::InvalidInput)?;
    Ok((state, blinded))
}

/// Server step (RFC 9497 §3.3.1 `BlindEvaluate`): `evaluated = skS * blinded`.
///
/// Fails with [`Error::Malformed`] unless `blinded` is a canonical 33-byte
/// compressed P-256 point (which excludes the identity).
pub fn blind_evaluate(key: &ServerKey, blinded: &[u8]) -> Result<EvaluatedElement> {
    let point = deserialize_element(blinded, "OPRF blinded element")?;
    Ok(serialize_element(&(point * key.sk)).expect("non-zero scalar times a point of prime order"))
}

/// Client step 2 (RFC 9497 §3.3.1 `Finalize`): unblinds the server's
/// element and returns the 32-byte PRF output. `input` must be the input
/// given to [`blind`].
///
/// Fails with [`Error::Malformed`] unless `evaluated` is a canonical 33-byte
/// compressed P-256 point.
pub fn finalize(state: BlindState, input: &[u8], evaluated: &[u8]) -> Result<OprfOutput> {
    check_input_len(input)?;
    let point = deserialize_element(evaluated, "OPRF evaluated element")?;
    let inverse: Scalar = Option::from(state.blind.invert()).expect("the blind is non-zero");
    let unblinded = point * inverse;
    let unblinded = serialize_element(&unblinded).expect("non-zero scalar times a point");
    Ok(finalize_hash(input, &unblinded))
}

/// The PRF evaluated directly by the key holder (RFC 9497 §3.3.1
/// `Evaluate`): equals `finalize(blind(input), ...)` for every blind.
pub fn evaluate(key: &ServerKey, input: &[u8]) -> Result<OprfOutput> {
    let point = hash_to_group(input)?;
    let element = serialize_element(&(point * key.sk)).ok_or(Error::InvalidInput)?;
    Ok(finalize_hash(input, &element))
}

fn finalize_hash(input: &[u8], element: &[u8; ELEMENT_LEN]) -> OprfOutput {
    let input_len = u16::try_from(input.len()).expect("input length checked");
    let mut h = Sha256::new();
    h.update(input_len.to_be_bytes());
    h.update(input);
    h.update((ELEMENT_LEN as u16).to_be_bytes());
    h.update(element);
    h.update(b"Finalize");
    h.finalize().into()
}

fn check_input_len(input: &[u8]) -> Result<()> {
    if input.len() > MAX_INPUT_LEN {
        return Err(Error::InvalidParameter(
            "OPRF input must be at most 65535 bytes",
        ));
    }
    Ok(())
}

/// `HashToGroup(input)`, rejecting the identity.
fn hash_to_group(input: &[u8]) -> Result<ProjectivePoint> {
    check_input_len(input)?;
    let p = hash2curve::hash_from_bytes::<NistP256, ExpandMsgXmd<Sha256>>(
        &[input],
        &[HASH_TO_GROUP_DST],
    )
    .expect("the DST is shorter than 256 bytes");
    if bool::from(p.is_identity()) {
        return Err(Error::InvalidInput);
    }
    Ok(p)
}

/// `HashToScalar` with an explicit DST: `OS2IP(expand_message_xmd(msg, dst, 48)) mod n`.
pub(crate) fn hash_to_scalar(msg: &[&[u8]], dst: &[&[u8]]) -> Scalar {
    hash2curve::hash_to_scalar::<NistP256, ExpandMsgXmd<Sha256>, U48>(msg, dst)
        .expect("the DST is shorter than 256 bytes")
}

/// RFC 9497 `HashToScalar(x)` with its default DST
/// `"HashToScalar-" || contextString`, as a big-endian scalar. Unused by the
/// base-mode protocol; exposed so other components can share the suite's
/// hash without re-deriving its DST.
pub fn hash_to_scalar_bytes(input: &[u8]) -> [u8; SCALAR_LEN] {
    hash_to_scalar(&[input], &[HASH_TO_SCALAR_DST])
        .to_repr()
        .into()
}

pub(crate) fn serialize_element(p: &ProjectivePoint) -> Option<[u8; ELEMENT_LEN]> {
    if bool::from(p.is_identity()) {
        return None;
    }
    let bytes = p.to_affine().to_bytes();
    let mut out = [0u8; ELEMENT_LEN];
    out.copy_from_slice(&bytes);
    Some(out)
}

pub(crate) fn deserialize_element(bytes: &[u8], what: &'static str) -> Result<ProjectivePoint> {
    let arr: [u8; ELEMENT_LEN] = bytes.try_into().map_err(|_| Error::Malformed(what))?;
    if arr[0] != 0x02 && arr[0] != 0x03 {
        return Err(Error::Malformed(what));
    }
    let point: Option<AffinePoint> = AffinePoint::from_bytes(&Array::from(arr)).into();
    let point = ProjectivePoint::from(point.ok_or(Error::Malformed(what))?);
    // Canonical encoding only: re-serialising must give the same bytes.
    match serialize_element(&point) {
        Some(again) if again == arr => Ok(point),
        _ => Err(Error::Malformed(what)),
    }
}

pub(crate) fn nonzero_scalar_from_bytes(bytes: &[u8], what: &'static str) -> Result<Scalar> {
    let mut arr: [u8; SCALAR_LEN] = bytes.try_into().map_err(|_| Error::Malformed(what))?;
    let s: Option<Scalar> = Scalar::from_repr(FieldBytes::from(arr)).into();
    arr.zeroize();
    match s {
        Some(s) if !bool::from(s.is_zero()) => Ok(s),
        _ => Err(Error::Malformed(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_strings() {
        let mut ctx = b"OPRFV1-".to_vec();
        ctx.push(MODE_OPRF);
        ctx.extend_from_slice(b"-P256-SHA256");
        assert_eq!(CONTEXT_STRING, &ctx[..]);
        assert_eq!(HASH_TO_GROUP_DST, &[b"HashToGroup-", &ctx[..]].concat()[..]);
        assert_eq!(
            HASH_TO_SCALAR_DST,
            &[b"HashToScalar-", &ctx[..]].concat()[..]
        );
        assert_eq!(
            DERIVE_KEY_PAIR_DST,
            &[b"DeriveKeyPair", &ctx[..]].concat()[..]
        );
    }

    #[test]
    fn rejects_bad_elements() {
        let key = ServerKey::derive(&[7; 32], b"k").unwrap();
        assert!(blind_evaluate(&key, &[0u8; 33]).is_err());
        assert!(blind_evaluate(&key, &[0u8; 1]).is_err());
        assert!(blind_evaluate(&key, &[]).is_err());
        let mut p = key.public_key();
        p[0] = 0x04;
        assert!(blind_evaluate(&key, &p).is_err());
        // x = p (non-canonical) is rejected.
        let mut x_eq_p = [0xffu8; 33];
        x_eq_p[0] = 0x02;
        assert!(blind_evaluate(&key, &x_eq_p).is_err());
    }

    #[test]
    fn rejects_zero_scalars() {
        assert!(ServerKey::from_bytes(&[0u8; 32]).is_err());
        assert!(ServerKey::from_bytes(&[0xffu8; 32]).is_err());
        assert!(blind_with_scalar(&[0u8; 32], b"x").is_err());
    }

    #[test]
    fn long_inputs_are_rejected() {
        let long = vec![0u8; MAX_INPUT_LEN + 1];
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert!(matches!(
            blind(&mut rng, &long),
            Err(Error::InvalidParameter(_))
        ));
        let ok = vec![0u8; MAX_INPUT_LEN];
        assert!(blind(&mut rng, &ok).is_ok());
    }

    #[test]
    fn redacted_debug() {
        let key = ServerKey::derive(&[1; 32], b"").unwrap();
        assert_eq!(format!("{key:?}"), "ServerKey(<redacted>)");
    }

    use rand_core::SeedableRng;
}

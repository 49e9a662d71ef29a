//! Threshold OPRF: the [`oprf`](crate::oprf) key `k` Shamir-shared t-of-n
//! across independent nodes, so that no single node (nor any `t − 1` of
//! them) can evaluate the PRF.
//!
//! A dealer splits `k` with [`deal`]; node `i` keeps only its share `k_i`
//! and answers a client's blinded element `B` with `Z_i = k_i · B` and a
//! DLEQ proof ([`evaluate_share`]). The client checks each answer against
//! the node's public share `K_i = k_i · G` ([`verify_share`]), combines any
//! `t` of them with Lagrange coefficients at zero ([`combine`]) into
//! `Z = k · B` — exactly what [`oprf::blind_evaluate`](crate::oprf::blind_evaluate)
//! returns for the whole key — and runs the unchanged
//! [`oprf::finalize`](crate::oprf::finalize). Outputs, and so content keys,
//! are those of the unshared key; a 1-of-1 dealing's single share *is* `k`.
//!
//! Byte-exact definitions (`n` below is the P-256 group order; scalars and
//! elements are serialised as in RFC 9497 for `OPRF(P-256, SHA-256)`):
//!
//! ```text
//! MAX_SHARES = 16;  1 <= t <= N <= MAX_SHARES  (t: threshold, N: node count)
//!
//! Dealing, with k the OPRF key:
//!     a_0 = k;  a_1 .. a_{t-1} random scalars in [1, n-1]
//!     f(x) = a_0 + a_1 x + ... + a_{t-1} x^(t-1)  mod n
//!     k_i = f(i) for node index i = 1 .. N     (redrawn if some k_i = 0)
//!     K_i = SerializeElement(k_i * G)          public share, 33 bytes
//! KeyShare     = I2OSP(i, 1) || SerializeScalar(k_i)            # 33 bytes
//! key file     = lowercase hex of KeyShare (66 characters); readers trim
//!                surrounding whitespace and accept either case
//!
//! Node i, for a blinded element B (33 bytes, DeserializeElement-checked):
//!     Z_i = k_i * B
//!     r   = random scalar in [1, n-1]        (fresh per evaluation)
//!     T2  = r * G;   T3 = r * B
//!     c   = Challenge(i, K_i, B, Z_i, T2, T3);   s = r - c * k_i  mod n
//!     proof = SerializeScalar(c) || SerializeScalar(s)           # 64 bytes
//! ShareEvaluation = I2OSP(i, 1) || SerializeElement(Z_i) || proof   # 98 bytes
//!
//! Challenge(i, K, B, Z, T2, T3) =
//!     HashToScalar(I2OSP(i, 1) ||
//!                  I2OSP(33, 2) || K  || I2OSP(33, 2) || B  ||
//!                  I2OSP(33, 2) || Z  || I2OSP(33, 2) || T2 ||
//!                  I2OSP(33, 2) || T3 || "Challenge",
//!                  DST = "HashToScalar-SeSPHR threshold OPRF share proof v1")
//!     with HashToScalar(x, DST) = OS2IP(expand_message_xmd_SHA256(x, DST, 48)) mod n
//!
//! Client, verifying node i's answer against its K_i:
//!     require the answer's index == i, c and s canonical (< n)
//!     T2 = s * G + c * K_i;   T3 = s * B + c * Z_i   (neither the identity)
//!     require Challenge(i, K_i, B, Z_i, T2, T3) == c
//! Client, combining the first t verified answers (distinct indices):
//!     lambda_i = prod_{j != i} x_j / (x_j - x_i)  mod n   over those t indices
//!     Z = sum lambda_i * Z_i  ( = k * B )  -> oprf::finalize as usual
//! ```
//!
//! The proof is RFC 9497 §2.2.1 `GenerateProof` / `VerifyProof` for one
//! element with `A = G`, `B = K_i`, `M = B`, `Z = Z_i` and two changes:
//! `ComputeComposites` is skipped (with a single element the composite is
//! the element itself), and the challenge hash has its own DST and covers
//! the node index, so a proof is valid for one node index, one public share
//! and one blinded element only. Encodings are decoded strictly: index
//! `1..=16`, canonical non-zero share scalar, canonical points (never the
//! identity), canonical proof scalars, exact lengths.
//!
//! Secrets — polynomial coefficients, shares, proof nonces — are zeroized.
//!
//! # Example
//!
//! ```
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//! use sesphr_dedup::{oprf, threshold};
//!
//! # fn main() -> Result<(), sesphr_dedup::Error> {
//! let mut rng = ChaCha20Rng::seed_from_u64(7); // use an OS-seeded RNG in practice
//! let key = oprf::ServerKey::derive(&[0xa3; 32], b"dedup key v1")?;
//!
//! // Dealer: 2-of-3 shares; the client's node list keeps (index, K_i).
//! let shares = threshold::deal(&mut rng, &key, 2, 3)?;
//! let nodes: Vec<_> = shares.iter().map(|s| (s.index(), s.public_share())).collect();
//!
//! // Client: blind as usual, ask nodes 3 and 1.
//! let input = [0x42; 32];
//! let (state, blinded) = oprf::blind(&mut rng, &input)?;
//! let mut answers = Vec::new();
//! for node in [2, 0] {
//!     let wire = threshold::evaluate_share(&mut rng, &shares[node], &blinded)?.to_bytes();
//!     let answer = threshold::ShareEvaluation::from_bytes(&wire)?;
//!     let (index, public_share) = nodes[node];
//!     threshold::verify_share(index, &public_share, &blinded, &answer)?;
//!     answers.push(answer);
//! }
//! let evaluated = threshold::combine(2, &answers)?;
//! let output = oprf::finalize(state, &input, &evaluated)?;
//! assert_eq!(output, oprf::evaluate(&key, &input)?);
//! # Ok(())
//! # }
//! ```

use core::fmt;

use p256::elliptic_curve::{Field, PrimeField};
use p256::{FieldBytes, ProjectivePoint, Scalar};
use rand_core::CryptoRng;
use sesphr_crypto::random_nonzero_scalar;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::oprf::{
    BlindedElement, ELEMENT_LEN, EvaluatedElement, SCALAR_LEN, ServerKey, deserialize_element,
    hash_to_scalar, nonzero_scalar_from_bytes, serialize_element,
};

/// Most nodes a key can be shared across; node indices are `1..=MAX_SHARES`.
pub const MAX_SHARES: u8 = 16;
/// Context string of the share proof.
pub const SHARE_PROOF_CONTEXT: &[u8] = b"SeSPHR threshold OPRF share proof v1";
/// DST of the share proof's challenge: `"HashToScalar-" || SHARE_PROOF_CONTEXT`.
pub const SHARE_PROOF_DST: &[u8] = b"HashToScalar-SeSPHR threshold OPRF share proof v1";
/// Length of an encoded [`KeyShare`]: index byte and scalar.
pub const KEY_SHARE_LEN: usize = 1 + SCALAR_LEN;
/// Length of a share proof: challenge `c` and response `s`.
pub const PROOF_LEN: usize = 2 * SCALAR_LEN;
/// Length of an encoded [`ShareEvaluation`]: index, element and proof.
pub const SHARE_EVALUATION_LEN: usize = 1 + ELEMENT_LEN + PROOF_LEN;

/// A node public share `K_i = k_i · G`, SEC1 compressed.
pub type PublicShare = [u8; ELEMENT_LEN];
/// A share proof `c || s`.
pub type ShareProof = [u8; PROOF_LEN];

const KEY_SHARE: &str = "threshold OPRF key share";
const SHARE_EVALUATION: &str = "threshold OPRF share evaluation";
const PUBLIC_SHARE: &str = "threshold OPRF public share";
const BLINDED: &str = "OPRF blinded element";

/// One node's share `(i, k_i = f(i))` of the OPRF key. Zeroized on drop;
/// `Debug` shows the index only.
#[derive(Clone)]
pub struct KeyShare {
    index: u8,
    secret: Scalar,
}

impl KeyShare {
    /// The node index `i` (`1..=MAX_SHARES`), the x-coordinate of the share.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// `SerializeElement(k_i · G)`: what clients verify this node's answers
    /// against.
    pub fn public_share(&self) -> PublicShare {
        serialize_element(&(ProjectivePoint::GENERATOR * self.secret))
            .expect("a non-zero multiple of G is not the identity")
    }

    /// `I2OSP(i, 1) || SerializeScalar(k_i)`.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_SHARE_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_SHARE_LEN]);
        out[0] = self.index;
        let mut repr = self.secret.to_repr();
        out[1..].copy_from_slice(&repr);
        repr.zeroize();
        out
    }

    /// Decodes [`to_bytes`](Self::to_bytes): exactly 33 bytes, index in
    /// `1..=MAX_SHARES`, scalar canonical and non-zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_SHARE_LEN || !index_in_range(bytes[0]) {
            return Err(Error::Malformed(KEY_SHARE));
        }
        Ok(Self {
            index: bytes[0],
            secret: nonzero_scalar_from_bytes(&bytes[1..], KEY_SHARE)?,
        })
    }

    /// The key-file form: [`to_bytes`](Self::to_bytes) as 66 lowercase hex
    /// characters, no newline.
    pub fn to_hex(&self) -> Zeroizing<String> {
        let bytes = self.to_bytes();
        let mut out = Zeroizing::new(String::with_capacity(2 * KEY_SHARE_LEN));
        for b in bytes.iter() {
            out.push(char::from(hex_digit(b >> 4)));
            out.push(char::from(hex_digit(b & 0x0f)));
        }
        out
    }

    /// Decodes [`to_hex`](Self::to_hex) after trimming surrounding
    /// whitespace (a trailing newline in a key file); either case is
    /// accepted. The digits are decoded in constant time.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim().as_bytes();
        if text.len() != 2 * KEY_SHARE_LEN {
            return Err(Error::Malformed(KEY_SHARE));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_SHARE_LEN]);
        let mut invalid = 0i16;
        for (out, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            invalid |= hi | lo;
            *out = ((hi << 4) | lo) as u8;
        }
        if invalid < 0 {
            return Err(Error::Malformed(KEY_SHARE));
        }
        Self::from_bytes(&*bytes)
    }
}

impl Drop for KeyShare {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl ZeroizeOnDrop for KeyShare {}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyShare")
            .field("index", &self.index)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A node's answer to one blinded element: its index, `Z_i = k_i · B` and
/// the proof that `Z_i` used the share behind its public share.
///
/// Travels either as one 98-byte field ([`to_bytes`](Self::to_bytes)) or as
/// three ([`index`](Self::index), [`evaluated`](Self::evaluated),
/// [`proof`](Self::proof), reassembled by [`from_parts`](Self::from_parts)).
/// Decoding checks the encoding only; [`verify_share`] checks the proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareEvaluation {
    index: u8,
    evaluated: EvaluatedElement,
    proof: ShareProof,
}

impl ShareEvaluation {
    /// Reassembles an evaluation from its fields: index in
    /// `1..=MAX_SHARES`, a canonical 33-byte compressed point, and a 64-byte
    /// proof of two canonical scalars.
    pub fn from_parts(index: u8, evaluated: &[u8], proof: &[u8]) -> Result<Self> {
        let malformed = || Error::Malformed(SHARE_EVALUATION);
        if !index_in_range(index) {
            return Err(malformed());
        }
        deserialize_element(evaluated, SHARE_EVALUATION)?;
        let proof: ShareProof = proof.try_into().map_err(|_| malformed())?;
        let (c, s) = proof.split_at(SCALAR_LEN);
        scalar_from_bytes(c).ok_or_else(malformed)?;
        scalar_from_bytes(s).ok_or_else(malformed)?;
        Ok(Self {
            index,
            evaluated: evaluated.try_into().map_err(|_| malformed())?,
            proof,
        })
    }

    /// Decodes [`to_bytes`](Self::to_bytes): exactly 98 bytes, checked as in
    /// [`from_parts`](Self::from_parts).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != SHARE_EVALUATION_LEN {
            return Err(Error::Malformed(SHARE_EVALUATION));
        }
        let (evaluated, proof) = bytes[1..].split_at(ELEMENT_LEN);
        Self::from_parts(bytes[0], evaluated, proof)
    }

    /// `I2OSP(i, 1) || SerializeElement(Z_i) || c || s`.
    pub fn to_bytes(&self) -> [u8; SHARE_EVALUATION_LEN] {
        let mut out = [0u8; SHARE_EVALUATION_LEN];
        out[0] = self.index;
        out[1..1 + ELEMENT_LEN].copy_from_slice(&self.evaluated);
        out[1 + ELEMENT_LEN..].copy_from_slice(&self.proof);
        out
    }

    /// The index of the node that answered.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// `SerializeElement(Z_i)`.
    pub fn evaluated(&self) -> &EvaluatedElement {
        &self.evaluated
    }

    /// The proof `SerializeScalar(c) || SerializeScalar(s)`.
    pub fn proof(&self) -> &ShareProof {
        &self.proof
    }
}

/// Dealer: splits `key` into `shares` shares of which any `threshold`
/// recover it, for nodes `1..=shares`. The polynomial's random coefficients
/// are zeroized before returning.
///
/// Fails with [`Error::InvalidParameter`] unless
/// `1 <= threshold <= shares <= MAX_SHARES`. With `threshold = 1` every
/// share equals `key`.
pub fn deal(
    rng: &mut (impl CryptoRng + ?Sized),
    key: &ServerKey,
    threshold: u8,
    shares: u8,
) -> Result<Vec<KeyShare>> {
    check_dealing(threshold, shares)?;
    loop {
        let mut coefficients = Zeroizing::new(Vec::with_capacity(usize::from(threshold)));
        coefficients.push(*key.scalar());
        for _ in 1..threshold {
            coefficients.push(random_nonzero_scalar(rng));
        }
        // A zero share (probability about N / 2^256) cannot be encoded:
        // draw another polynomial.
        if let Some(out) = shares_of(&coefficients, shares) {
            return Ok(out);
        }
    }
}

/// [`deal`] with caller-chosen coefficients `a_1 .. a_{t-1}` (32 big-endian
/// bytes each, canonical, non-zero; `threshold = coefficients.len() + 1`),
/// for test vectors and cross-implementation tests.
///
/// Never use it in production: whoever knows the coefficients and one share
/// knows the key.
///
/// Fails with [`Error::InvalidParameter`] for an out-of-range threshold or
/// share count, or if the coefficients give some node a zero share.
pub fn deal_with_coefficients(
    key: &ServerKey,
    coefficients: &[[u8; SCALAR_LEN]],
    shares: u8,
) -> Result<Vec<KeyShare>> {
    let threshold = u8::try_from(coefficients.len() + 1)
        .map_err(|_| Error::InvalidParameter("threshold must be between 1 and 16"))?;
    check_dealing(threshold, shares)?;
    let mut polynomial = Zeroizing::new(Vec::with_capacity(usize::from(threshold)));
    polynomial.push(*key.scalar());
    for a in coefficients {
        polynomial.push(nonzero_scalar_from_bytes(
            a,
            "threshold OPRF polynomial coefficient",
        )?);
    }
    shares_of(&polynomial, shares).ok_or(Error::InvalidParameter(
        "the coefficients give a node a zero share",
    ))
}

/// Node: evaluates its share on a client's blinded element and proves it
/// did, with a fresh random proof nonce.
///
/// Fails with [`Error::Malformed`] unless `blinded` is a canonical 33-byte
/// compressed P-256 point.
pub fn evaluate_share(
    rng: &mut (impl CryptoRng + ?Sized),
    share: &KeyShare,
    blinded: &[u8],
) -> Result<ShareEvaluation> {
    let nonce = Zeroizing::new(random_nonzero_scalar(rng));
    evaluate_share_inner(share, blinded, &nonce)
}

/// [`evaluate_share`] with a caller-chosen proof nonce `r` (32 big-endian
/// bytes, canonical, non-zero), for test vectors and cross-implementation
/// tests.
///
/// Never use it in production: two proofs with the same nonce (or one with
/// a known nonce) reveal the share.
pub fn evaluate_share_with_nonce(
    share: &KeyShare,
    blinded: &[u8],
    nonce: &[u8; SCALAR_LEN],
) -> Result<ShareEvaluation> {
    let nonce = Zeroizing::new(nonzero_scalar_from_bytes(nonce, "share proof nonce")?);
    evaluate_share_inner(share, blinded, &nonce)
}

fn evaluate_share_inner(share: &KeyShare, blinded: &[u8], r: &Scalar) -> Result<ShareEvaluation> {
    let point = deserialize_element(blinded, BLINDED)?;
    let blinded: BlindedElement = blinded.try_into().expect("length checked");
    let evaluated = serialize_element(&(point * share.secret))
        .expect("non-zero scalar times a point of prime order");
    let t2 = serialize_element(&(ProjectivePoint::GENERATOR * r)).expect("non-zero nonce");
    let t3 = serialize_element(&(point * r)).expect("non-zero nonce");
    let c = challenge(
        share.index,
        &share.public_share(),
        &blinded,
        &evaluated,
        &t2,
        &t3,
    );
    let mut s = Zeroizing::new(c * share.secret);
    *s = *r - *s;
    let mut proof = [0u8; PROOF_LEN];
    proof[..SCALAR_LEN].copy_from_slice(&c.to_repr());
    proof[SCALAR_LEN..].copy_from_slice(&s.to_repr());
    Ok(ShareEvaluation {
        index: share.index,
        evaluated,
        proof,
    })
}

/// Client: checks that `evaluation` is node `index`'s evaluation of
/// `blinded` under the share behind `public_share` (both taken from the
/// client's trusted node list, never from the answer).
///
/// Fails with [`Error::Malformed`] for a malformed public share or blinded
/// element, and with [`Error::ShareVerificationFailed`] if the answer
/// carries another index or its proof does not verify — a wrong `Z_i`, or a
/// proof made for another node, public share or blinded element.
pub fn verify_share(
    index: u8,
    public_share: &[u8],
    blinded: &[u8],
    evaluation: &ShareEvaluation,
) -> Result<()> {
    let k = deserialize_element(public_share, PUBLIC_SHARE)?;
    let b = deserialize_element(blinded, BLINDED)?;
    if evaluation.index != index {
        return Err(Error::ShareVerificationFailed);
    }
    let z = deserialize_element(&evaluation.evaluated, SHARE_EVALUATION)?;
    let (c, s) = evaluation.proof.split_at(SCALAR_LEN);
    let malformed = || Error::Malformed(SHARE_EVALUATION);
    let c = scalar_from_bytes(c).ok_or_else(malformed)?;
    let s = scalar_from_bytes(s).ok_or_else(malformed)?;
    let t2 = ProjectivePoint::GENERATOR * s + k * c;
    let t3 = b * s + z * c;
    let (Some(t2), Some(t3)) = (serialize_element(&t2), serialize_element(&t3)) else {
        return Err(Error::ShareVerificationFailed);
    };
    let expected = challenge(
        index,
        public_share.try_into().expect("length checked"),
        blinded.try_into().expect("length checked"),
        &evaluation.evaluated,
        &t2,
        &t3,
    );
    if bool::from(expected.ct_eq(&c)) {
        Ok(())
    } else {
        Err(Error::ShareVerificationFailed)
    }
}

/// Client: combines the first `threshold` of `evaluations` (verified with
/// [`verify_share`]) into `k · B`, the element to pass to
/// [`oprf::finalize`](crate::oprf::finalize). Further evaluations are
/// ignored but must still carry distinct indices.
///
/// Fails with [`Error::InvalidParameter`] if `threshold` is not in
/// `1..=MAX_SHARES`, if there are fewer evaluations than `threshold`, or if
/// two carry the same index.
pub fn combine(threshold: u8, evaluations: &[ShareEvaluation]) -> Result<EvaluatedElement> {
    let indices: Vec<u8> = evaluations.iter().map(|e| e.index).collect();
    let elements: Vec<&[u8]> = evaluations.iter().map(|e| &e.evaluated[..]).collect();
    interpolate(threshold, &indices, &elements, SHARE_EVALUATION)
}

/// Combines the first `threshold` of the nodes' `(index, public share)`
/// pairs into `k · G`, which equals [`ServerKey::public_key`] for a
/// consistent dealing: lets an operator or client check a set of public
/// shares against the key's public key.
///
/// Fails with [`Error::InvalidParameter`] as [`combine`] does, and also for
/// an index outside `1..=MAX_SHARES`; with [`Error::Malformed`] for a
/// malformed public share.
pub fn combine_public_shares(
    threshold: u8,
    public_shares: &[(u8, PublicShare)],
) -> Result<PublicShare> {
    let indices: Vec<u8> = public_shares.iter().map(|(i, _)| *i).collect();
    let elements: Vec<&[u8]> = public_shares.iter().map(|(_, k)| &k[..]).collect();
    interpolate(threshold, &indices, &elements, PUBLIC_SHARE)
}

/// `sum lambda_i * P_i` over the first `threshold` points, after checking
/// every index.
fn interpolate(
    threshold: u8,
    indices: &[u8],
    elements: &[&[u8]],
    what: &'static str,
) -> Result<[u8; ELEMENT_LEN]> {
    if !index_in_range(threshold) {
        return Err(Error::InvalidParameter(
            "threshold must be between 1 and 16",
        ));
    }
    if indices.iter().any(|&i| !index_in_range(i)) {
        return Err(Error::InvalidParameter(
            "share index must be between 1 and 16",
        ));
    }
    let mut seen = 0u32;
    for &i in indices {
        if seen & (1 << i) != 0 {
            return Err(Error::InvalidParameter("share indices must be distinct"));
        }
        seen |= 1 << i;
    }
    let t = usize::from(threshold);
    if indices.len() < t {
        return Err(Error::InvalidParameter(
            "fewer share evaluations than the threshold",
        ));
    }
    let used = &indices[..t];
    let mut sum = ProjectivePoint::IDENTITY;
    for (&i, element) in used.iter().zip(elements) {
        sum += deserialize_element(element, what)? * lagrange_at_zero(i, used);
    }
    serialize_element(&sum).ok_or(Error::InvalidParameter(
        "the shares combine to the identity",
    ))
}

/// `lambda_i = prod_{j in set, j != i} x_j / (x_j - x_i)`, for distinct
/// non-zero indices (so every denominator is invertible).
fn lagrange_at_zero(i: u8, set: &[u8]) -> Scalar {
    let xi = Scalar::from(u64::from(i));
    let mut num = Scalar::ONE;
    let mut den = Scalar::ONE;
    for &j in set.iter().filter(|&&j| j != i) {
        let xj = Scalar::from(u64::from(j));
        num *= xj;
        den *= xj - xi;
    }
    num * Option::<Scalar>::from(den.invert()).expect("distinct indices below n")
}

fn check_dealing(threshold: u8, shares: u8) -> Result<()> {
    if threshold == 0 {
        return Err(Error::InvalidParameter("threshold must be at least 1"));
    }
    if shares > MAX_SHARES {
        return Err(Error::InvalidParameter("at most 16 shares"));
    }
    if threshold > shares {
        return Err(Error::InvalidParameter(
            "threshold must not exceed the number of shares",
        ));
    }
    Ok(())
}

/// `(i, f(i))` for `i = 1..=shares` (Horner), or `None` if some `f(i) = 0`.
fn shares_of(polynomial: &[Scalar], shares: u8) -> Option<Vec<KeyShare>> {
    let mut out = Vec::with_capacity(usize::from(shares));
    for index in 1..=shares {
        let x = Scalar::from(u64::from(index));
        let mut share = KeyShare {
            index,
            secret: Scalar::ZERO,
        };
        for a in polynomial.iter().rev() {
            share.secret = share.secret * x + a;
        }
        if bool::from(share.secret.is_zero()) {
            return None;
        }
        out.push(share);
    }
    Some(out)
}

fn challenge(
    index: u8,
    public_share: &[u8; ELEMENT_LEN],
    blinded: &[u8; ELEMENT_LEN],
    evaluated: &[u8; ELEMENT_LEN],
    t2: &[u8; ELEMENT_LEN],
    t3: &[u8; ELEMENT_LEN],
) -> Scalar {
    let len = (ELEMENT_LEN as u16).to_be_bytes();
    hash_to_scalar(
        &[
            &[index],
            &len,
            public_share,
            &len,
            blinded,
            &len,
            evaluated,
            &len,
            t2,
            &len,
            t3,
            b"Challenge",
        ],
        &[SHARE_PROOF_DST],
    )
}

fn index_in_range(i: u8) -> bool {
    (1..=MAX_SHARES).contains(&i)
}

/// A canonical scalar (`< n`, zero allowed).
fn scalar_from_bytes(bytes: &[u8]) -> Option<Scalar> {
    let arr: [u8; SCALAR_LEN] = bytes.try_into().ok()?;
    Scalar::from_repr(FieldBytes::from(arr)).into()
}

/// The lowercase hex digit of `n < 16`, without branches on `n`.
fn hex_digit(n: u8) -> u8 {
    let n = i16::from(n);
    // 9 - n is negative exactly for n >= 10; skip from '9' + 1 to 'a'.
    (n + i16::from(b'0') + (((9 - n) >> 8) & i16::from(b'a' - b'0' - 10))) as u8
}

/// The value of a hex digit (either case), or a negative number, without
/// branches on `c`.
fn hex_value(c: u8) -> i16 {
    let c = i16::from(c);
    // -1 when lo <= c <= hi, else 0.
    let within = |lo: u8, hi: u8| ((i16::from(lo) - 1 - c) & (c - i16::from(hi) - 1)) >> 8;
    let digit = within(b'0', b'9') & (c - i16::from(b'0') + 1);
    let lower = within(b'a', b'f') & (c - i16::from(b'a') + 11);
    let upper = within(b'A', b'F') & (c - i16::from(b'A') + 11);
    (digit | lower | upper) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_dst() {
        assert_eq!(
            SHARE_PROOF_DST,
            &[b"HashToScalar-", SHARE_PROOF_CONTEXT].concat()[..]
        );
    }

    #[test]
    fn hex_digits_match_a_table() {
        for n in 0u8..16 {
            assert_eq!(hex_digit(n), b"0123456789abcdef"[usize::from(n)]);
        }
        for c in 0u8..=255 {
            let want = (c as char).to_digit(16).map(|d| d as i16);
            let got = hex_value(c);
            match want {
                Some(d) => assert_eq!(got, d, "{c:#x}"),
                None => assert!(got < 0, "{c:#x}"),
            }
        }
    }

    #[test]
    fn lagrange_coefficients_sum_to_one() {
        // Interpolating the constant polynomial 1 gives 1.
        for set in [&[1u8][..], &[1, 2], &[3, 1], &[2, 5, 16], &[1, 2, 3, 4, 5]] {
            let sum = set
                .iter()
                .fold(Scalar::ZERO, |acc, &i| acc + lagrange_at_zero(i, set));
            assert_eq!(sum, Scalar::ONE);
        }
        // {1, 3}: lambda_1 = 3/2, lambda_3 = -1/2.
        let two_inv = Option::<Scalar>::from(Scalar::from(2u64).invert()).unwrap();
        assert_eq!(lagrange_at_zero(1, &[1, 3]), Scalar::from(3u64) * two_inv);
        assert_eq!(lagrange_at_zero(3, &[1, 3]), -two_inv);
    }

    fn assert_zeroize_on_drop<T: ZeroizeOnDrop>() {}

    #[test]
    fn shares_zeroize_and_redact() {
        assert_zeroize_on_drop::<KeyShare>();
        let key = ServerKey::derive(&[1; 32], b"").unwrap();
        let share = &deal_with_coefficients(&key, &[], 1).unwrap()[0];
        assert_eq!(
            format!("{share:?}"),
            "KeyShare { index: 1, secret: \"<redacted>\" }"
        );
    }
}

//! Shamir secret sharing of the 32-byte master secret over the P-256
//! scalar field, and sealing one share to a PRE public key (trustee
//! recovery, `docs/crypto.md` §14).
//!
//! A 32-byte secret may exceed the group order `n`, so it is shared as two
//! 16-byte halves, each a scalar below `2^128 < n`, with two independent
//! polynomials of degree `t − 1` evaluated at the same index `x ∈ 1..=255`.
//! Each [`Share`] carries the threshold, a random id of the set it belongs
//! to and a check value of the secret, so [`combine`] refuses too few
//! shares, shares of two different splits, two shares with one index, and
//! shares that do not rebuild the secret they were split from.
//!
//! ```
//! use sesphr_crypto::shamir::{self, SealPurpose, SealedShare, ShareContext};
//! use sesphr_crypto::{MasterSecret, SecretKey};
//! use sesphr_crypto::rand_core::{OsRng, TryRngCore};
//!
//! # fn main() -> Result<(), sesphr_crypto::Error> {
//! let mut rng = OsRng.unwrap_err();
//! let master = MasterSecret::generate(&mut rng);
//! let shares = shamir::split(&mut rng, &master, 2, 3)?;
//!
//! // Share 1 sealed to a trustee's PRE public key, bound to its context.
//! let trustee = SecretKey::generate(&mut rng);
//! let context = ShareContext::new(SealPurpose::Trustee, "alice", "bob", 2, 1_800_000_000)?;
//! let sealed = shamir::seal_share(&mut rng, &trustee.public_key(), &context, &shares[1])?;
//! let opened = SealedShare::from_bytes(&sealed)?.open(&trustee)?;
//!
//! // Any two shares rebuild the secret; one alone does not.
//! let back = shamir::combine(&[opened, shares[2].clone()])?;
//! assert_eq!(back.to_bytes(), master.to_bytes());
//! assert!(shamir::combine(&shares[..1]).is_err());
//! # Ok(())
//! # }
//! ```
//!
//! Fewer than `t` shares are independent of the secret (each half is a
//! uniformly random polynomial's value), except for the check value
//! `SHA-256(prefix || set_id || secret)`, which a holder could only use by
//! guessing all 256 bits of the secret.

use core::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use p256::elliptic_curve::PrimeField;
use p256::{FieldBytes, Scalar};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::arith::{self, SCALAR_LEN};
use crate::capsule::{self, Capsule, KemKey};
use crate::dst;
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey};
use crate::master::MasterSecret;

/// Length of a share set's random id.
pub const SET_ID_LEN: usize = 16;
/// The most shares one split makes (indices `1..=255`).
pub const MAX_SHARES: u8 = u8::MAX;
/// The fewest shares a split may require (one share alone would be the
/// secret).
pub const MIN_THRESHOLD: u8 = 2;
/// The longest owner or holder id a sealed share names, in bytes.
pub const MAX_ID_LEN: usize = 255;
/// The longest sealed share ([`seal_share`] output).
pub const MAX_SEALED_LEN: usize = SEALED_FIXED_LEN + 2 * MAX_ID_LEN;

/// Version byte of a share's encoding.
const SHARE_VERSION: u8 = 1;
/// Magic of a sealed share.
pub const SEALED_MAGIC: &[u8; 4] = b"SSHR";
/// Version byte of a sealed share.
const SEALED_VERSION: u8 = 1;
/// Everything of a sealed share but the two ids.
const SEALED_FIXED_LEN: usize = 4 + 1 + 1 + 2 + 2 + 1 + 8 + Capsule::LEN + Share::LEN + TAG_LEN;
const TAG_LEN: usize = 16;
/// The AEAD key is used for one message only, so the nonce is fixed.
const NONCE: [u8; 12] = [0u8; 12];
const HALF: usize = MasterSecret::LEN / 2;

/// One share of a master secret. Zeroized on drop; `Debug` shows only the
/// public parts (set id, threshold, index).
#[derive(Clone)]
pub struct Share {
    set_id: [u8; SET_ID_LEN],
    threshold: u8,
    index: u8,
    check: [u8; 32],
    y: [Scalar; 2],
}

impl Share {
    /// Length of [`Share::to_bytes`]: `version (1) || set_id (16) ||
    /// threshold (1) || index (1) || check (32) || y_0 (32) || y_1 (32)`.
    pub const LEN: usize = 1 + SET_ID_LEN + 1 + 1 + 32 + 2 * SCALAR_LEN;

    /// The id of the split it belongs to.
    pub fn set_id(&self) -> &[u8; SET_ID_LEN] {
        &self.set_id
    }

    /// How many shares of its set rebuild the secret.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// Its index `x` (1-based).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The encoding above. Handle with care: it is secret.
    pub fn to_bytes(&self) -> Zeroizing<[u8; Self::LEN]> {
        let mut out = Zeroizing::new([0u8; Self::LEN]);
        out[0] = SHARE_VERSION;
        out[1..17].copy_from_slice(&self.set_id);
        out[17] = self.threshold;
        out[18] = self.index;
        out[19..51].copy_from_slice(&self.check);
        let mut y0 = Zeroizing::new(arith::scalar_to_bytes(&self.y[0]));
        let mut y1 = Zeroizing::new(arith::scalar_to_bytes(&self.y[1]));
        out[51..83].copy_from_slice(&y0[..]);
        out[83..115].copy_from_slice(&y1[..]);
        y0.zeroize();
        y1.zeroize();
        out
    }

    /// Decodes a share: version 1, `2 <= threshold`, `index >= 1`, both
    /// values canonical scalars.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "secret share";
        if bytes.len() != Self::LEN || bytes[0] != SHARE_VERSION {
            return Err(Error::Malformed(W));
        }
        let threshold = bytes[17];
        let index = bytes[18];
        if threshold < MIN_THRESHOLD || index == 0 {
            return Err(Error::Malformed(W));
        }
        let mut set_id = [0u8; SET_ID_LEN];
        set_id.copy_from_slice(&bytes[1..17]);
        let mut check = [0u8; 32];
        check.copy_from_slice(&bytes[19..51]);
        let y0 = arith::scalar_from_bytes(&bytes[51..83], W)?;
        let y1 = arith::scalar_from_bytes(&bytes[83..115], W)?;
        Ok(Self {
            set_id,
            threshold,
            index,
            check,
            y: [y0, y1],
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.y.zeroize();
        self.check.zeroize();
    }
}

impl ZeroizeOnDrop for Share {}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("set_id", &arith::hex_string(&self.set_id))
            .field("threshold", &self.threshold)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// `SHA-256(SHAMIR_CHECK_PREFIX || set_id || secret)`.
fn check_value(set_id: &[u8; SET_ID_LEN], secret: &[u8; MasterSecret::LEN]) -> [u8; 32] {
    Sha256::new()
        .chain_update(dst::SHAMIR_CHECK_PREFIX)
        .chain_update(set_id)
        .chain_update(secret)
        .finalize()
        .into()
}

/// The two halves of the secret as scalars (`OS2IP` of 16 bytes each).
fn halves(secret: &[u8; MasterSecret::LEN]) -> [Scalar; 2] {
    let mut out = [Scalar::ZERO; 2];
    for (j, slot) in out.iter_mut().enumerate() {
        let mut repr = Zeroizing::new([0u8; SCALAR_LEN]);
        repr[HALF..].copy_from_slice(&secret[j * HALF..(j + 1) * HALF]);
        let s: Option<Scalar> = Scalar::from_repr(FieldBytes::from(*repr)).into();
        *slot = s.expect("a 128-bit value is below the group order");
    }
    out
}

fn check_parameters(threshold: u8, n: u8) -> Result<()> {
    if threshold < MIN_THRESHOLD {
        return Err(Error::InvalidParameter("a threshold must be at least 2"));
    }
    if threshold > n {
        return Err(Error::InvalidParameter(
            "the threshold must not exceed the number of shares",
        ));
    }
    Ok(())
}

/// Splits `secret` into `n` shares of which any `threshold` rebuild it
/// (`2 <= threshold <= n <= 255`).
pub fn split(
    rng: &mut (impl CryptoRng + ?Sized),
    secret: &MasterSecret,
    threshold: u8,
    n: u8,
) -> Result<Vec<Share>> {
    check_parameters(threshold, n)?;
    let mut set_id = [0u8; SET_ID_LEN];
    rng.fill_bytes(&mut set_id);
    let mut coefficients: Zeroizing<Vec<[Scalar; 2]>> = Zeroizing::new(
        (1..threshold)
            .map(|_| {
                [
                    arith::random_nonzero_scalar(rng),
                    arith::random_nonzero_scalar(rng),
                ]
            })
            .collect(),
    );
    let out = split_with(secret, &set_id, &coefficients, n);
    coefficients.zeroize();
    out
}

/// Deterministic core of [`split`]: coefficients `a_1..a_{t−1}` of both
/// polynomials given (used by the test vectors).
pub(crate) fn split_with(
    secret: &MasterSecret,
    set_id: &[u8; SET_ID_LEN],
    coefficients: &[[Scalar; 2]],
    n: u8,
) -> Result<Vec<Share>> {
    let threshold = u8::try_from(coefficients.len() + 1)
        .map_err(|_| Error::InvalidParameter("at most 255 shares"))?;
    check_parameters(threshold, n)?;
    let bytes = secret.to_bytes();
    let check = check_value(set_id, &bytes);
    let s = Zeroizing::new(halves(&bytes));
    let mut shares = Vec::with_capacity(usize::from(n));
    for index in 1..=n {
        let x = Scalar::from(u64::from(index));
        let mut y = [Scalar::ZERO; 2];
        for (j, yj) in y.iter_mut().enumerate() {
            // Horner: ((a_{t-1} x + a_{t-2}) x + ...) x + s_j.
            let mut acc = Scalar::ZERO;
            for c in coefficients.iter().rev() {
                acc = acc * x + c[j];
            }
            *yj = acc * x + s[j];
            acc.zeroize();
        }
        shares.push(Share {
            set_id: *set_id,
            threshold,
            index,
            check,
            y,
        });
    }
    Ok(shares)
}

/// Rebuilds the secret from at least `threshold` shares of one split.
///
/// Refused with [`Error::Shares`]: no shares, shares of different splits
/// (set id, threshold or check value differ), fewer than the threshold,
/// two with the same index, and shares that do not rebuild the secret
/// they were split from (one was altered).
pub fn combine(shares: &[Share]) -> Result<MasterSecret> {
    let first = shares.first().ok_or(Error::Shares("no shares given"))?;
    if shares.iter().any(|s| {
        s.set_id != first.set_id || s.threshold != first.threshold || s.check != first.check
    }) {
        return Err(Error::Shares("the shares are of different recovery setups"));
    }
    if shares.len() < usize::from(first.threshold) {
        return Err(Error::Shares("fewer shares than the threshold"));
    }
    let mut seen = [false; 256];
    for s in shares {
        if std::mem::replace(&mut seen[usize::from(s.index)], true) {
            return Err(Error::Shares("two shares have the same index"));
        }
    }
    let xs: Vec<Scalar> = shares
        .iter()
        .map(|s| Scalar::from(u64::from(s.index)))
        .collect();
    let lambdas = crate::cfrag::lagrange_at_zero(&xs)
        .ok_or(Error::Shares("two shares have the same index"))?;
    let mut secret = Zeroizing::new([0u8; MasterSecret::LEN]);
    let mut in_range = subtle::Choice::from(1u8);
    for j in 0..2 {
        let mut s = Scalar::ZERO;
        for (share, l) in shares.iter().zip(&lambdas) {
            s += share.y[j] * l;
        }
        let bytes = Zeroizing::new(arith::scalar_to_bytes(&s));
        s.zeroize();
        in_range &= bytes[..HALF].ct_eq(&[0u8; HALF]);
        secret[j * HALF..(j + 1) * HALF].copy_from_slice(&bytes[HALF..]);
    }
    let ok = in_range & check_value(&first.set_id, &secret).ct_eq(&first.check);
    if !bool::from(ok) {
        return Err(Error::Shares(
            "the shares do not rebuild the secret they were split from (one was altered)",
        ));
    }
    MasterSecret::from_bytes(&secret[..])
}

/// Whom a sealed share is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SealPurpose {
    /// Sealed by the owner to a trustee's PRE public key, kept by the SRS.
    Trustee = 1,
    /// Re-sealed by a trustee to a recovery request's public key (an
    /// approval).
    Request = 2,
}

/// What a sealed share is bound to (its associated data, sent in clear).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareContext {
    purpose: SealPurpose,
    owner_id: String,
    holder_id: String,
    threshold: u8,
    created_at: i64,
}

impl ShareContext {
    /// A context: `owner_id` whose secret it is, `holder_id` the trustee it
    /// was sealed to (or, for an approval, who re-sealed it), the setup's
    /// threshold and time (Unix seconds, the owner's clock). Ids are 1 to
    /// 255 bytes.
    pub fn new(
        purpose: SealPurpose,
        owner_id: &str,
        holder_id: &str,
        threshold: u8,
        created_at: i64,
    ) -> Result<Self> {
        for id in [owner_id, holder_id] {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(Error::InvalidParameter("ids must be 1 to 255 bytes"));
            }
        }
        if threshold < MIN_THRESHOLD {
            return Err(Error::InvalidParameter("a threshold must be at least 2"));
        }
        Ok(Self {
            purpose,
            owner_id: owner_id.to_owned(),
            holder_id: holder_id.to_owned(),
            threshold,
            created_at,
        })
    }

    /// Whom it is for.
    pub fn purpose(&self) -> SealPurpose {
        self.purpose
    }

    /// Whose secret it is a share of.
    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// The trustee it was sealed to, or who re-sealed it.
    pub fn holder_id(&self) -> &str {
        &self.holder_id
    }

    /// The setup's threshold.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The setup's time (Unix seconds, the owner's clock).
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    /// `magic || version || purpose || u16be(len) owner || u16be(len)
    /// holder || threshold || i64be(created_at)`.
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEALED_FIXED_LEN);
        out.extend_from_slice(SEALED_MAGIC);
        out.push(SEALED_VERSION);
        out.push(self.purpose as u8);
        for id in [&self.owner_id, &self.holder_id] {
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        out.push(self.threshold);
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out
    }
}

/// The AES-256-GCM key of a sealed share:
/// `HKDF-SHA256(salt = none, IKM = kem_key, info = SEALED_SHARE_KEY_INFO)`.
pub(crate) fn seal_key(kem_key: &KemKey) -> Zeroizing<[u8; 32]> {
    let (mut prk, hk) = Hkdf::<Sha256>::extract(None, kem_key.as_bytes());
    prk.zeroize();
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(dst::SEALED_SHARE_KEY_INFO, &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Seals `share` to `recipient` (ECIES: a fresh capsule and KEM key, then
/// AES-256-GCM with the context and capsule as associated data):
/// `header || capsule (98) || ciphertext (131)`, at most
/// [`MAX_SEALED_LEN`] bytes. The share's threshold must be the context's.
pub fn seal_share(
    rng: &mut (impl CryptoRng + ?Sized),
    recipient: &PublicKey,
    context: &ShareContext,
    share: &Share,
) -> Result<Vec<u8>> {
    let (capsule, kem_key) = capsule::encapsulate(rng, recipient);
    seal_share_with(&capsule, &kem_key, context, share)
}

/// Deterministic core of [`seal_share`].
pub(crate) fn seal_share_with(
    capsule: &Capsule,
    kem_key: &KemKey,
    context: &ShareContext,
    share: &Share,
) -> Result<Vec<u8>> {
    if share.threshold != context.threshold {
        return Err(Error::InvalidParameter(
            "the share's threshold is not the context's",
        ));
    }
    let mut out = context.header();
    out.extend_from_slice(&capsule.to_bytes());
    let key = seal_key(kem_key);
    let plain = share.to_bytes();
    let ct = Aes256Gcm::new(&(*key).into())
        .encrypt(
            &NONCE.into(),
            Payload {
                msg: &plain[..],
                aad: &out,
            },
        )
        .map_err(|_| Error::InvalidParameter("AES-GCM refused the share"))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// A sealed share, decoded: its context can be read before it is opened.
#[derive(Clone, Debug)]
pub struct SealedShare {
    context: ShareContext,
    capsule: Capsule,
    /// `header || capsule`: the associated data.
    aad: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl SealedShare {
    /// Decodes a sealed share (magic, version, purpose, id lengths,
    /// threshold, a valid capsule, the exact length).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "sealed share";
        let bad = || Error::Malformed(W);
        if bytes.len() > MAX_SEALED_LEN || bytes.len() < 6 || &bytes[..4] != SEALED_MAGIC {
            return Err(bad());
        }
        if bytes[4] != SEALED_VERSION {
            return Err(bad());
        }
        let purpose = match bytes[5] {
            1 => SealPurpose::Trustee,
            2 => SealPurpose::Request,
            _ => return Err(bad()),
        };
        let mut at = 6;
        let mut ids = [String::new(), String::new()];
        for id in &mut ids {
            let len_bytes = bytes.get(at..at + 2).ok_or_else(bad)?;
            let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
            at += 2;
            let raw = bytes.get(at..at + len).ok_or_else(bad)?;
            *id = std::str::from_utf8(raw).map_err(|_| bad())?.to_owned();
            at += len;
        }
        let threshold = *bytes.get(at).ok_or_else(bad)?;
        at += 1;
        let time = bytes.get(at..at + 8).ok_or_else(bad)?;
        let created_at = i64::from_be_bytes(time.try_into().expect("8 bytes"));
        at += 8;
        let [owner_id, holder_id] = ids;
        let context = ShareContext::new(purpose, &owner_id, &holder_id, threshold, created_at)
            .map_err(|_| bad())?;
        let capsule = Capsule::from_bytes(bytes.get(at..at + Capsule::LEN).ok_or_else(bad)?)?;
        at += Capsule::LEN;
        if bytes.len() - at != Share::LEN + TAG_LEN {
            return Err(bad());
        }
        Ok(Self {
            context,
            capsule,
            aad: bytes[..at].to_vec(),
            ciphertext: bytes[at..].to_vec(),
        })
    }

    /// What it is bound to. Unauthenticated until [`SealedShare::open`]
    /// succeeded.
    pub fn context(&self) -> &ShareContext {
        &self.context
    }

    /// Opens it with the recipient's secret key. Any failure (another key,
    /// an altered byte anywhere) is [`Error::DecryptionFailed`].
    pub fn open(&self, recipient: &SecretKey) -> Result<Share> {
        let kem_key = capsule::decapsulate_original(recipient, &self.capsule)?;
        let key = seal_key(&kem_key);
        let plain = Zeroizing::new(
            Aes256Gcm::new(&(*key).into())
                .decrypt(
                    &NONCE.into(),
                    Payload {
                        msg: &self.ciphertext,
                        aad: &self.aad,
                    },
                )
                .map_err(|_| Error::DecryptionFailed)?,
        );
        let share = Share::from_bytes(&plain).map_err(|_| Error::DecryptionFailed)?;
        if share.threshold != self.context.threshold {
            return Err(Error::DecryptionFailed);
        }
        Ok(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn same(a: &MasterSecret, b: &MasterSecret) -> bool {
        a.to_bytes() == b.to_bytes()
    }

    #[test]
    fn every_threshold_subset_rebuilds_the_secret() {
        let mut rng = rng(1);
        for (t, n) in [(2u8, 2u8), (2, 3), (3, 5), (5, 5), (4, 10)] {
            let master = MasterSecret::generate(&mut rng);
            let shares = split(&mut rng, &master, t, n).unwrap();
            assert_eq!(shares.len(), usize::from(n));
            // Every window of t consecutive shares (cyclically), in both orders.
            for start in 0..usize::from(n) {
                let mut subset: Vec<Share> = (0..usize::from(t))
                    .map(|k| shares[(start + k) % usize::from(n)].clone())
                    .collect();
                assert!(same(&combine(&subset).unwrap(), &master));
                subset.reverse();
                assert!(same(&combine(&subset).unwrap(), &master));
            }
            // All of them too.
            assert!(same(&combine(&shares).unwrap(), &master));
            // Fewer than t: refused, never a wrong secret.
            let err = combine(&shares[..usize::from(t) - 1]).unwrap_err();
            assert!(matches!(err, Error::Shares(_)), "{err}");
        }
    }

    /// Secrets at the edges of the encoding: all zeros, all ones (above the
    /// group order as one integer), halves at 2^128 - 1.
    #[test]
    fn edge_secrets_round_trip() {
        let mut rng = rng(2);
        for bytes in [[0u8; 32], [0xff; 32], {
            let mut b = [0u8; 32];
            b[..16].fill(0xff);
            b
        }] {
            let master = MasterSecret::from_bytes(&bytes).unwrap();
            let shares = split(&mut rng, &master, 2, 3).unwrap();
            assert_eq!(*combine(&shares[1..]).unwrap().to_bytes(), bytes);
        }
    }

    #[test]
    fn mixed_duplicate_and_altered_shares_are_refused() {
        let mut rng = rng(3);
        let master = MasterSecret::generate(&mut rng);
        let a = split(&mut rng, &master, 2, 3).unwrap();
        let b = split(&mut rng, &master, 2, 3).unwrap();
        let msg = |r: Result<MasterSecret>| match r {
            Err(Error::Shares(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(combine(&[a[0].clone(), b[1].clone()])).contains("different"));
        assert!(msg(combine(&[a[0].clone(), a[0].clone()])).contains("same index"));
        assert!(msg(combine(&[])).contains("no shares"));
        // A share whose value was changed (its encoding re-made, as a
        // malicious holder could), by any amount.
        for delta in [Scalar::ONE, -Scalar::ONE, Scalar::from(1u64 << 40)] {
            let mut bad = a[1].clone();
            bad.y[0] += delta;
            let e = msg(combine(&[a[0].clone(), bad]));
            assert!(e.contains("do not rebuild"), "{e}");
        }
        // Its index changed.
        let mut moved = a[1].clone();
        moved.index = 3;
        assert!(msg(combine(&[a[0].clone(), moved])).contains("do not rebuild"));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut rng = rng(4);
        let master = MasterSecret::generate(&mut rng);
        for (t, n) in [(0u8, 3u8), (1, 3), (4, 3)] {
            assert!(matches!(
                split(&mut rng, &master, t, n),
                Err(Error::InvalidParameter(_))
            ));
        }
        assert_eq!(split(&mut rng, &master, 2, 255).unwrap().len(), 255);
    }

    #[test]
    fn share_encoding_round_trips_and_is_strict() {
        let mut rng = rng(5);
        let master = MasterSecret::generate(&mut rng);
        let shares = split(&mut rng, &master, 3, 4).unwrap();
        let bytes = shares[2].to_bytes();
        let back = Share::from_bytes(&bytes[..]).unwrap();
        assert_eq!(*back.to_bytes(), *bytes);
        assert_eq!((back.threshold(), back.index()), (3, 3));
        let dbg = format!("{back:?}");
        assert!(!dbg.contains(&arith::hex_string(&bytes[51..83])), "{dbg}");
        let tweak = |i: usize, v: u8| {
            let mut b = bytes.to_vec();
            b[i] = v;
            Share::from_bytes(&b)
        };
        assert!(tweak(0, 2).is_err()); // version
        assert!(tweak(17, 1).is_err()); // threshold 1
        assert!(tweak(18, 0).is_err()); // index 0
        let mut big = bytes.to_vec();
        big[51..83].fill(0xff); // y_0 >= n
        assert!(Share::from_bytes(&big).is_err());
        assert!(Share::from_bytes(&bytes[..Share::LEN - 1]).is_err());
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(Share::from_bytes(&long).is_err());
    }

    fn sealed_fixture() -> (ChaCha20Rng, SecretKey, ShareContext, Vec<Share>, Vec<u8>) {
        let mut rng = rng(6);
        let master = MasterSecret::generate(&mut rng);
        let shares = split(&mut rng, &master, 2, 3).unwrap();
        let trustee = SecretKey::generate(&mut rng);
        let ctx =
            ShareContext::new(SealPurpose::Trustee, "alice", "bob", 2, 1_800_000_000).unwrap();
        let sealed = seal_share(&mut rng, &trustee.public_key(), &ctx, &shares[0]).unwrap();
        (rng, trustee, ctx, shares, sealed)
    }

    #[test]
    fn a_sealed_share_opens_with_its_recipient_key_only() {
        let (mut rng, trustee, ctx, shares, sealed) = sealed_fixture();
        assert_eq!(sealed.len(), SEALED_FIXED_LEN + 5 + 3);
        let parsed = SealedShare::from_bytes(&sealed).unwrap();
        assert_eq!(parsed.context(), &ctx);
        let opened = parsed.open(&trustee).unwrap();
        assert_eq!(*opened.to_bytes(), *shares[0].to_bytes());
        let other = SecretKey::generate(&mut rng);
        assert!(matches!(parsed.open(&other), Err(Error::DecryptionFailed)));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (_, trustee, _, _, sealed) = sealed_fixture();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let opened = SealedShare::from_bytes(&bad).and_then(|s| s.open(&trustee));
            assert!(opened.is_err(), "byte {i}");
        }
        assert!(SealedShare::from_bytes(&sealed[..sealed.len() - 1]).is_err());
        let mut long = sealed.clone();
        long.push(0);
        assert!(SealedShare::from_bytes(&long).is_err());
    }

    #[test]
    fn the_context_is_bound() {
        // A share sealed under one context cannot be presented under
        // another: swapping the header of another seal (same lengths)
        // breaks the tag.
        let (mut rng, trustee, _, shares, sealed) = sealed_fixture();
        for ctx in [
            ShareContext::new(SealPurpose::Request, "alice", "bob", 2, 1_800_000_000).unwrap(),
            ShareContext::new(SealPurpose::Trustee, "alicf", "bob", 2, 1_800_000_000).unwrap(),
            ShareContext::new(SealPurpose::Trustee, "alice", "bod", 2, 1_800_000_000).unwrap(),
            ShareContext::new(SealPurpose::Trustee, "alice", "bob", 2, 1_800_000_001).unwrap(),
        ] {
            let header = ctx.header();
            let mut forged = header.clone();
            forged.extend_from_slice(&sealed[header.len()..]);
            let parsed = SealedShare::from_bytes(&forged).unwrap();
            assert!(parsed.open(&trustee).is_err(), "{ctx:?}");
        }
        // A share of threshold 2 under a context of threshold 3: refused at
        // sealing.
        let ctx3 = ShareContext::new(SealPurpose::Trustee, "alice", "bob", 3, 0).unwrap();
        assert!(seal_share(&mut rng, &trustee.public_key(), &ctx3, &shares[0]).is_err());
    }

    #[test]
    fn contexts_refuse_bad_ids() {
        assert!(ShareContext::new(SealPurpose::Trustee, "", "bob", 2, 0).is_err());
        let long = "a".repeat(256);
        assert!(ShareContext::new(SealPurpose::Trustee, "alice", &long, 2, 0).is_err());
        assert!(ShareContext::new(SealPurpose::Trustee, "alice", "bob", 1, 0).is_err());
        // The longest ids fit in MAX_SEALED_LEN exactly.
        let mut rng = rng(7);
        let master = MasterSecret::generate(&mut rng);
        let shares = split(&mut rng, &master, 2, 2).unwrap();
        let id = "a".repeat(255);
        let ctx = ShareContext::new(SealPurpose::Trustee, &id, &id, 2, i64::MIN).unwrap();
        let sk = SecretKey::generate(&mut rng);
        let sealed = seal_share(&mut rng, &sk.public_key(), &ctx, &shares[1]).unwrap();
        assert_eq!(sealed.len(), MAX_SEALED_LEN);
        let parsed = SealedShare::from_bytes(&sealed).unwrap();
        assert_eq!(parsed.context().created_at(), i64::MIN);
        parsed.open(&sk).unwrap();
    }

    #[test]
    fn shares_zeroize_on_drop() {
        fn assert_zod<T: ZeroizeOnDrop>() {}
        assert_zod::<Share>();
    }
}

//! Signed tree heads ("checkpoints") and witness cosignatures.
//!
//! Shaped like C2SP `tlog-checkpoint` and `tlog-cosignature`, with ECDSA
//! P-256 (SHA-256, low-s, `r || s` 64 bytes) instead of Ed25519 and the
//! root in hex. Byte-exact (all text is ASCII, lines end in `\n`):
//!
//! ```text
//! body          = origin "\n" size "\n" hex(root) "\n" "time " time "\n"
//!                 origin: 1..=128 printable ASCII bytes, no spaces
//!                 size, time: decimal u64 / i64 (unix seconds), no leading zeros
//!                 hex(root): 64 lowercase hex digits
//! log signature = ECDSA-P256-SHA256(log key,
//!                     "sesphr-audit-checkpoint/v1\n" || body)
//! cosignature   = ECDSA-P256-SHA256(witness key,
//!                     "sesphr-audit-cosignature/v1\n" ||
//!                     "witness " name "\n" || "time " wtime "\n" || body)
//! public keys   = SEC1 compressed points (33 bytes), hex in files
//! ```
//!
//! A cosignature says: *this witness saw this checkpoint at `wtime` and had
//! verified it consistent with every checkpoint of this origin it had
//! cosigned before*. Two cosignatures by one witness on different roots at
//! one size are proof that the witness (or its key) misbehaved
//! ([`Equivocation`]).

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::merkle::Hash;

const CHECKPOINT_CONTEXT: &[u8] = b"sesphr-audit-checkpoint/v1\n";
const COSIGNATURE_CONTEXT: &[u8] = b"sesphr-audit-cosignature/v1\n";

/// Longest origin or witness name.
pub const MAX_NAME_LEN: usize = 128;

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of a public key (SEC1 compressed).
pub const PUBLIC_KEY_LEN: usize = 33;

/// What went wrong reading or checking a checkpoint, key or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0} signature does not verify")]
    BadSignature(String),
}

/// A tree head: the log `origin` had `size` entries with `root` at `time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub time: i64,
}

fn check_name(name: &str, what: &'static str) -> Result<(), CheckpointError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::Malformed(what))
    }
}

impl Checkpoint {
    /// The signed text (see the module docs).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            hex::encode(self.root),
            self.time
        )
    }

    /// Parses a body strictly: exactly the bytes [`Checkpoint::body`] writes.
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        let bad = || CheckpointError::Malformed("checkpoint");
        let rest = body.strip_suffix('\n').ok_or_else(bad)?;
        let mut lines = rest.split('\n');
        let origin = lines.next().ok_or_else(bad)?;
        let size = lines.next().ok_or_else(bad)?;
        let root = lines.next().ok_or_else(bad)?;
        let time = lines
            .next()
            .and_then(|l| l.strip_prefix("time "))
            .ok_or_else(bad)?;
        if lines.next().is_some() {
            return Err(bad());
        }
        check_name(origin, "checkpoint origin")?;
        let cp = Checkpoint {
            origin: origin.to_owned(),
            size: size.parse().map_err(|_| bad())?,
            root: parse_hash(root).ok_or_else(bad)?,
            time: time.parse().map_err(|_| bad())?,
        };
        // Round trip: refuses leading zeros, "+", upper-case hex.
        if cp.body() != body {
            return Err(bad());
        }
        Ok(cp)
    }

    fn signed_message(&self) -> Vec<u8> {
        [CHECKPOINT_CONTEXT, self.body().as_bytes()].concat()
    }

    fn cosigned_message(&self, witness: &str, time: i64) -> Vec<u8> {
        let head = format!("witness {witness}\ntime {time}\n");
        [COSIGNATURE_CONTEXT, head.as_bytes(), self.body().as_bytes()].concat()
    }
}

fn parse_hash(s: &str) -> Option<Hash> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// A checkpoint with the log's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signature: [u8; SIGNATURE_LEN],
}

/// One witness's cosignature on a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    pub witness: String,
    pub time: i64,
    pub signature: [u8; SIGNATURE_LEN],
}

/// An ECDSA P-256 signing key (the log's or a witness's). Zeroized on drop.
pub struct SigningKey(p256::ecdsa::SigningKey);

impl SigningKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(bytes.as_ref()) {
                return SigningKey(k);
            }
        }
    }

    /// Reads the key file format: 64 hex digits of the scalar, surrounding
    /// whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, CheckpointError> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| CheckpointError::Malformed("signing key"))?,
        );
        if bytes.len() != 32 {
            return Err(CheckpointError::Malformed("signing key"));
        }
        p256::ecdsa::SigningKey::from_slice(&bytes)
            .map(SigningKey)
            .map_err(|_| CheckpointError::Malformed("signing key"))
    }

    /// The key file format (see [`SigningKey::from_hex`]).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.to_bytes()))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let sig: p256::ecdsa::Signature = self.0.sign(message);
        let sig = sig.normalize_s();
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&sig.to_bytes());
        out
    }

    /// The log's signature on `checkpoint`.
    pub fn sign_checkpoint(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let signature = self.sign(&checkpoint.signed_message());
        SignedCheckpoint {
            checkpoint,
            signature,
        }
    }

    /// A witness `name`'s cosignature on `checkpoint` at `time`.
    pub fn cosign(&self, name: &str, time: i64, checkpoint: &Checkpoint) -> Cosignature {
        Cosignature {
            witness: name.to_owned(),
            time,
            signature: self.sign(&checkpoint.cosigned_message(name, time)),
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A log's or witness's public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(p256::ecdsa::VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CheckpointError> {
        // Compressed form only (tag 2 or 3): SEC1 also has a 33-byte
        // "compact" form (tag 5), which would give one key two encodings.
        if bytes.len() != PUBLIC_KEY_LEN || !matches!(bytes[0], 2 | 3) {
            return Err(CheckpointError::Malformed("public key"));
        }
        p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| CheckpointError::Malformed("public key"))
    }

    pub fn from_hex(text: &str) -> Result<Self, CheckpointError> {
        let bytes =
            hex::decode(text.trim()).map_err(|_| CheckpointError::Malformed("public key"))?;
        Self::from_bytes(&bytes)
    }

    /// SEC1 compressed.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.0.to_sec1_point(true).as_bytes());
        out
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
            return false;
        };
        // Only the low-s form is accepted, so signatures are not malleable.
        if sig.normalize_s() != sig {
            return false;
        }
        self.0.verify(message, &sig).is_ok()
    }

    /// Checks the log's signature on a checkpoint.
    pub fn verify_checkpoint(&self, signed: &SignedCheckpoint) -> Result<(), CheckpointError> {
        if self.verify(&signed.checkpoint.signed_message(), &signed.signature) {
            Ok(())
        } else {
            Err(CheckpointError::BadSignature("log".into()))
        }
    }

    /// Checks a witness's cosignature on `checkpoint`.
    pub fn verify_cosignature(
        &self,
        checkpoint: &Checkpoint,
        cosignature: &Cosignature,
    ) -> Result<(), CheckpointError> {
        let msg = checkpoint.cosigned_message(&cosignature.witness, cosignature.time);
        if self.verify(&msg, &cosignature.signature) {
            Ok(())
        } else {
            Err(CheckpointError::BadSignature(format!(
                "witness {}",
                cosignature.witness
            )))
        }
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// Evidence that one witness cosigned two different roots at one size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "witness {witness} cosigned two different roots at size {size}: {} and {}",
    hex::encode(.first), hex::encode(.second)
)]
pub struct Equivocation {
    pub witness: String,
    pub size: u64,
    pub first: Hash,
    pub second: Hash,
}

/// Accepts `signed` only if the log key signed it and at least `quorum` of
/// the named `witnesses` (name, key) validly cosigned it; returns the names
/// of the witnesses that did. Unknown names and bad cosignatures do not
/// count (and are not errors: a witness may have rotated its key).
pub fn verify_witnessed(
    log_key: &PublicKey,
    signed: &SignedCheckpoint,
    cosignatures: &[Cosignature],
    witnesses: &[(String, PublicKey)],
    quorum: usize,
) -> Result<Vec<String>, CheckpointError> {
    log_key.verify_checkpoint(signed)?;
    let mut ok: Vec<String> = Vec::new();
    for c in cosignatures {
        if ok.contains(&c.witness) {
            continue;
        }
        let Some((_, key)) = witnesses.iter().find(|(n, _)| *n == c.witness) else {
            continue;
        };
        if key.verify_cosignature(&signed.checkpoint, c).is_ok() {
            ok.push(c.witness.clone());
        }
    }
    if ok.len() < quorum {
        return Err(CheckpointError::BadSignature(format!(
            "witness quorum: {} of {} required witnesses cosigned size {}",
            ok.len(),
            quorum,
            signed.checkpoint.size
        )));
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn cp(size: u64, root: u8) -> Checkpoint {
        Checkpoint {
            origin: "sesphr.test/audit".into(),
            size,
            root: [root; 32],
            time: 1_700_000_000,
        }
    }

    #[test]
    fn body_is_as_documented_and_parses_strictly() {
        let c = cp(12, 0xab);
        let body = c.body();
        assert_eq!(
            body,
            format!(
                "sesphr.test/audit\n12\n{}\ntime 1700000000\n",
                "ab".repeat(32)
            )
        );
        assert_eq!(Checkpoint::parse(&body).unwrap(), c);
        for bad in [
            body.replace("\n12\n", "\n012\n"),
            body.replace("\n12\n", "\n+12\n"),
            body.to_uppercase(),
            body.trim_end().to_owned(),
            format!("{body}extra\n"),
            body.replace("sesphr.test/audit", "two words"),
            body.replace("time ", "time  "),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signatures_bind_every_field() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let log = SigningKey::generate(&mut rng);
        let w = SigningKey::generate(&mut rng);
        let signed = log.sign_checkpoint(cp(5, 1));
        log.public_key().verify_checkpoint(&signed).unwrap();
        assert!(w.public_key().verify_checkpoint(&signed).is_err());
        for changed in [cp(6, 1), cp(5, 2), {
            let mut c = cp(5, 1);
            c.time += 1;
            c
        }] {
            let forged = SignedCheckpoint {
                checkpoint: changed,
                signature: signed.signature,
            };
            assert!(log.public_key().verify_checkpoint(&forged).is_err());
        }
        let co = w.cosign("srs-node-1", 9, &signed.checkpoint);
        w.public_key()
            .verify_cosignature(&signed.checkpoint, &co)
            .unwrap();
        let mut renamed = co.clone();
        renamed.witness = "srs-node-2".into();
        assert!(
            w.public_key()
                .verify_cosignature(&signed.checkpoint, &renamed)
                .is_err()
        );
        // A cosignature is not a log signature (domain separation).
        let as_log = SignedCheckpoint {
            checkpoint: signed.checkpoint.clone(),
            signature: co.signature,
        };
        assert!(w.public_key().verify_checkpoint(&as_log).is_err());
    }

    #[test]
    fn high_s_signatures_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let log = SigningKey::generate(&mut rng);
        let signed = log.sign_checkpoint(cp(1, 1));
        let sig = p256::ecdsa::Signature::from_slice(&signed.signature).unwrap();
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        let mut bad = signed.clone();
        bad.signature.copy_from_slice(&high.to_bytes());
        assert!(log.public_key().verify_checkpoint(&bad).is_err());
    }

    #[test]
    fn quorum_counts_distinct_known_valid_witnesses() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let log = SigningKey::generate(&mut rng);
        let ws: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&mut rng)).collect();
        let named: Vec<(String, PublicKey)> = ws
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("w{i}"), k.public_key()))
            .collect();
        let signed = log.sign_checkpoint(cp(3, 3));
        let c0 = ws[0].cosign("w0", 1, &signed.checkpoint);
        let c1 = ws[1].cosign("w1", 1, &signed.checkpoint);
        let stranger = SigningKey::generate(&mut rng).cosign("w9", 1, &signed.checkpoint);
        let lk = log.public_key();
        let two = [c0.clone(), c1.clone()];
        assert_eq!(
            verify_witnessed(&lk, &signed, &two, &named, 2).unwrap(),
            ["w0", "w1"]
        );
        // Duplicates and strangers do not make up a quorum.
        let dup = [c0.clone(), c0.clone(), stranger];
        assert!(verify_witnessed(&lk, &signed, &dup, &named, 2).is_err());
        // A cosignature made for another checkpoint does not count.
        let other = ws[1].cosign("w1", 1, &cp(3, 4));
        assert!(verify_witnessed(&lk, &signed, &[c0, other], &named, 2).is_err());
        assert!(verify_witnessed(&lk, &signed, &[], &named, 0).is_ok());
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let k = SigningKey::generate(&mut rng);
        let again = SigningKey::from_hex(&format!(" {}\n", k.to_hex().as_str())).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        let p = PublicKey::from_hex(&k.public_key().to_hex()).unwrap();
        assert_eq!(p, k.public_key());
        assert!(SigningKey::from_hex("00").is_err());
        assert!(SigningKey::from_hex(&"00".repeat(32)).is_err());
        assert!(PublicKey::from_hex(&"05".repeat(33)).is_err());
    }
}

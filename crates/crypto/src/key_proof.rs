//! Proof of possession of a user's registered kfrag-signing key, sent when
//! an enrolled id asks for a certificate for a new TLS key (a new device, a
//! restore from a backup, a phrase or trustees, a re-invitation).
//!
//! The proof is an ECDSA P-256/SHA-256 signature (`r || s`, low s) over
//!
//! ```text
//! KEY_PROOF_PREFIX || u16be(len(trust_domain)) || trust_domain
//!                  || u16be(len(user_id)) || user_id || SHA-256(csr_der)
//! ```
//!
//! It binds the certificate request (so it cannot be replayed for another
//! TLS key) and the id and mesh (so it cannot be replayed elsewhere). The
//! prefix differs from every other signed message of the crate, so a kfrag
//! or record signature is never a key proof and vice versa.

use sha2::{Digest, Sha256};

use crate::dst;
use crate::error::{Error, Result};
use crate::keys::{SIGNATURE_LEN, Signature, SigningKey, VerifyingKey};

/// The longest trust domain or user id a key proof covers.
const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// The SHA-256 digest a key proof signs.
fn key_proof_digest(trust_domain: &str, user_id: &str, csr_der: &[u8]) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(dst::KEY_PROOF_PREFIX);
    for field in [trust_domain.as_bytes(), user_id.as_bytes()] {
        if field.len() > MAX_FIELD_LEN {
            return Err(Error::Malformed("key proof field"));
        }
        h.update((field.len() as u16).to_be_bytes());
        h.update(field);
    }
    h.update(Sha256::digest(csr_der));
    Ok(h.finalize().into())
}

impl SigningKey {
    /// Proves possession of this key for a certificate request of
    /// `user_id` in `trust_domain` (see the module docs).
    pub fn sign_key_proof(
        &self,
        trust_domain: &str,
        user_id: &str,
        csr_der: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN]> {
        Ok(self.sign_prehashed(&key_proof_digest(trust_domain, user_id, csr_der)?))
    }
}

impl VerifyingKey {
    /// Checks a proof made by [`SigningKey::sign_key_proof`].
    pub fn verify_key_proof(
        &self,
        trust_domain: &str,
        user_id: &str,
        csr_der: &[u8],
        proof: &[u8],
    ) -> Result<()> {
        let signature = Signature::from_bytes(proof)?;
        self.verify_prehashed(
            &key_proof_digest(trust_domain, user_id, csr_der)?,
            &signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key() -> SigningKey {
        SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(7))
    }

    #[test]
    fn a_proof_verifies_for_what_it_binds_only() {
        let sk = key();
        let vk = sk.verifying_key();
        let proof = sk.sign_key_proof("mesh.test", "alice", b"csr").unwrap();
        vk.verify_key_proof("mesh.test", "alice", b"csr", &proof)
            .unwrap();
        for (td, id, csr) in [
            ("mesh.other", "alice", &b"csr"[..]),
            ("mesh.test", "mallory", b"csr"),
            ("mesh.test", "alice", b"csr2"),
            // The length prefixes keep the fields apart.
            ("mesh.tes", "talice", b"csr"),
        ] {
            assert!(
                matches!(
                    vk.verify_key_proof(td, id, csr, &proof),
                    Err(Error::VerificationFailed)
                ),
                "{td} {id}"
            );
        }
        let other = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(8)).verifying_key();
        assert!(
            other
                .verify_key_proof("mesh.test", "alice", b"csr", &proof)
                .is_err()
        );
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let vk = key().verifying_key();
        for bad in [&[][..], &[0u8; 63], &[0u8; 64], &[0xff; 64], &[1u8; 65]] {
            assert!(vk.verify_key_proof("m", "a", b"c", bad).is_err());
        }
    }

    /// The message layout of docs/crypto.md, checked against `p256`'s own
    /// verifier over the same bytes.
    #[test]
    fn the_signed_message_is_the_documented_one() {
        use p256::ecdsa::signature::Verifier as _;
        let sk = key();
        let proof = sk.sign_key_proof("mesh.test", "alice", b"csr").unwrap();
        let mut msg = b"SESPHR-V1-KEY-PROOF".to_vec();
        msg.extend_from_slice(&9u16.to_be_bytes());
        msg.extend_from_slice(b"mesh.test");
        msg.extend_from_slice(&5u16.to_be_bytes());
        msg.extend_from_slice(b"alice");
        msg.extend_from_slice(&Sha256::digest(b"csr"));
        let vk =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sk.verifying_key().to_bytes()).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&proof).unwrap();
        vk.verify(&msg, &sig).unwrap();
    }
}

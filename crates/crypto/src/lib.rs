//! SeSPHR cryptography core: Umbral-style threshold proxy re-encryption on
//! NIST P-256, per-partition keys derived from one master secret, and
//! streaming record encryption (AES-256-GCM, STREAM construction).
//!
//! The byte-exact specification is `docs/crypto.md` in the repository; the
//! test vectors live in `tests/vectors/`.
//!
//! # Owner → grantee flow
//!
//! ```
//! use sesphr_crypto::{
//!     decapsulate_original, decapsulate_reencrypted, encapsulate, generate_kfrags, reencrypt,
//!     CapsuleFrag, KeyFrag, MasterSecret, SecretKey,
//! };
//! use sesphr_crypto::rand_core::{OsRng, TryRngCore};
//!
//! # fn main() -> Result<(), sesphr_crypto::Error> {
//! let mut rng = OsRng.unwrap_err(); // any `CryptoRng`; tests use a seeded ChaCha
//!
//! // The patient (owner) derives a partition key pair and a signing key.
//! let master = MasterSecret::generate(&mut rng);
//! let (owner_sk, owner_pk) = master.partition_keys("medical", 0)?;
//! let signer = master.signing_key();
//! let verifying_key = signer.verifying_key();
//!
//! // A practitioner (grantee) has its own key pair.
//! let grantee_sk = SecretKey::generate(&mut rng);
//! let grantee_pk = grantee_sk.public_key();
//!
//! // Encrypting a record: a fresh KEM key under the partition key.
//! let (capsule, key) = encapsulate(&mut rng, &owner_pk);
//! assert_eq!(decapsulate_original(&owner_sk, &capsule)?, key);
//!
//! // Granting: 2-of-3 kfrags, one per proxy (SRS replica).
//! let kfrags = generate_kfrags(&mut rng, &owner_sk, &grantee_pk, &signer, 2, 3)?;
//!
//! // Each proxy checks its kfrag came from the owner for this grantee...
//! let kfrag = KeyFrag::from_bytes(&*kfrags[0].to_bytes())?
//!     .verify(&verifying_key, &owner_pk, &grantee_pk)?;
//! // ...and re-encrypts the capsule, with a proof of correct re-encryption.
//! let cfrag0 = reencrypt(&mut rng, &capsule, &kfrag);
//! let cfrag1 = reencrypt(&mut rng, &capsule, &kfrags[2]);
//!
//! // The grantee verifies the cfrags and opens the capsule.
//! let cfrags = [cfrag0, cfrag1]
//!     .iter()
//!     .map(|c| CapsuleFrag::from_bytes(&c.to_bytes())?
//!         .verify(&capsule, &verifying_key, &owner_pk, &grantee_pk))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let recovered = decapsulate_reencrypted(&grantee_sk, &owner_pk, &capsule, &cfrags)?;
//! assert_eq!(recovered, key);
//!
//! // One cfrag is not enough.
//! assert!(decapsulate_reencrypted(&grantee_sk, &owner_pk, &capsule, &cfrags[..1]).is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Security notes
//!
//! - All secret-dependent arithmetic (scalar multiplications by secret
//!   scalars, share evaluation, Lagrange coefficients, key derivation) is
//!   constant-time. Variable-time routines are used only where every input
//!   is public (capsule, kfrag-signature and proof verification).
//! - Secrets ([`SecretKey`], [`SigningKey`], [`MasterSecret`], [`KemKey`],
//!   the share inside a [`KeyFrag`], a [`shamir::Share`] of the master
//!   secret) are zeroized on drop and redacted in `Debug`.
//! - Cryptographic failures are opaque: [`Error::VerificationFailed`] and
//!   [`Error::DecryptionFailed`] never say which check failed.
//! - Random numbers come from a caller-supplied [`rand_core::CryptoRng`]
//!   (rand_core 0.9, re-exported as [`rand_core`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod arith;
mod capsule;
mod cfrag;
pub mod dst;
mod ec;
mod error;
mod field;
mod key_proof;
mod keys;
mod kfrag;
mod master;
pub mod record;
pub mod shamir;
pub mod stream;

#[doc(hidden)]
pub mod vectors;

pub use rand_core;

pub use arith::{random_nonzero_scalar, warm_up};
pub use capsule::{Capsule, KemKey, decapsulate_original, encapsulate};
pub use cfrag::{CapsuleFrag, VerifiedCapsuleFrag, decapsulate_reencrypted, reencrypt};
pub use error::{Error, Result};
pub use keys::{PublicKey, SIGNATURE_LEN, SecretKey, SigningKey, VerifyingKey};
pub use kfrag::{
    KFRAG_ID_LEN, KeyFrag, MAX_SHARES, VerifiedKeyFrag, generate_kfrags, generate_node_kfrags,
    grant_context, node_kfrag_id,
};
pub use master::{MAX_PARTITION_LEN, MasterSecret};
pub use record::{
    DemKey, DemKeySource, HeaderDraft, RecordHeader, RecordOpener, RecordReader, RecordSealer,
    RecordSegmentOpener, RecordSegmentSealer, RecordWriter, decrypt_record, encrypt_record,
};

#[cfg(test)]
mod send_sync {
    use super::*;
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn public_types_are_send_sync() {
        assert_send_sync::<SecretKey>();
        assert_send_sync::<PublicKey>();
        assert_send_sync::<SigningKey>();
        assert_send_sync::<VerifyingKey>();
        assert_send_sync::<Capsule>();
        assert_send_sync::<KemKey>();
        assert_send_sync::<KeyFrag>();
        assert_send_sync::<VerifiedKeyFrag>();
        assert_send_sync::<CapsuleFrag>();
        assert_send_sync::<VerifiedCapsuleFrag>();
        assert_send_sync::<MasterSecret>();
        assert_send_sync::<RecordHeader>();
        assert_send_sync::<RecordSealer>();
        assert_send_sync::<RecordOpener>();
        // Shared by reference between the threads sealing or opening one
        // record's segments.
        assert_send_sync::<RecordSegmentSealer>();
        assert_send_sync::<RecordSegmentOpener>();
        assert_send_sync::<stream::SegmentCipher>();
        assert_send_sync::<shamir::Share>();
        assert_send_sync::<shamir::SealedShare>();
        assert_send_sync::<Error>();
    }
}

//! SeSPHR deduplication core: the cryptography that lets the storage keep
//! one copy of a record's content however many patients upload it, without
//! learning the content and without letting someone who merely knows a hash
//! claim it.
//!
//! * [`oprf`] — RFC 9497 OPRF(P-256, SHA-256), base mode: the client learns
//!   `F(k, SHA-256(plaintext))` from a key server that sees nothing, so
//!   content keys resist offline brute force of low-entropy files.
//! * [`threshold`] — the OPRF key Shamir-shared t-of-n across independent
//!   nodes: each answers with its share's evaluation and a DLEQ proof, the
//!   client verifies and combines any t of them into the same output as
//!   the unshared key, and no `t − 1` nodes can evaluate the PRF.
//! * [`convergent`] — message-locked encryption: the content key derived
//!   from the OPRF output encrypts the blob deterministically (AES-256-GCM
//!   STREAM), equal plaintexts give equal blobs, addressed by
//!   `blob_id = SHA-256(blob)`; the content key is wrapped per record under
//!   the record's KEM key.
//! * [`pow`] — proof of ownership (Halevi et al., CCS'11, Merkle tree over
//!   the ciphertext blob): an uploader claiming an existing blob answers a
//!   random challenge of 97 leaves with their authentication paths.
//!
//! The crate does no I/O; every API is push-style with memory bounded by
//! one blob segment (or 32 bytes per 4 KiB leaf for proof building).
//! `README.md` next to this crate specifies every byte for other-language
//! clients.
//!
//! # Example
//!
//! ```
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//! use sesphr_dedup::{convergent, oprf, pow};
//!
//! # fn main() -> Result<(), sesphr_dedup::Error> {
//! let mut rng = ChaCha20Rng::seed_from_u64(7); // use an OS-seeded RNG in practice
//! let server_key = oprf::ServerKey::derive(&[0xa3; 32], b"dedup key v1")?;
//! let plaintext = b"{\"resourceType\":\"Observation\"}".repeat(500);
//!
//! // Client: OPRF on the content digest, one round trip to the key server.
//! let input = convergent::content_digest(&plaintext);
//! let (state, blinded) = oprf::blind(&mut rng, &input)?;
//! let evaluated = oprf::blind_evaluate(&server_key, &blinded)?; // server side
//! let output = oprf::finalize(state, &input, &evaluated)?;
//! assert_eq!(output, oprf::evaluate(&server_key, &input)?);
//!
//! // Client: deterministic blob encryption and its address.
//! let key = convergent::content_key(&output);
//! let blob = convergent::seal_blob(&key, &plaintext);
//! let id = convergent::blob_id(&blob);
//! assert_eq!(blob, convergent::seal_blob(&key, &plaintext)); // dedup-friendly
//!
//! // Server, on first upload: remember the Merkle root of the blob.
//! let tree = pow::MerkleTree::from_bytes(&blob);
//!
//! // A later uploader of the same id must prove it holds the blob.
//! let challenge = pow::Challenge::generate(&mut rng, tree.leaf_count(), 1_700_000_000)?;
//! let wire = challenge.to_bytes();
//! let proof = pow::prove(&pow::Challenge::from_bytes(&wire)?, &blob)?; // client
//! let proof = pow::Proof::from_bytes(&proof.to_bytes())?;
//! assert!(!challenge.is_expired(1_700_000_010, pow::DEFAULT_CHALLENGE_TTL_SECS));
//! pow::verify(tree.root(), tree.leaf_count(), &challenge, &proof)?;
//!
//! // The content key travels wrapped under the record's KEM key.
//! let kem_key = [9u8; 32];
//! let wrapped = convergent::wrap_content_key(&mut rng, &kem_key, &key, &id);
//! let key2 = convergent::unwrap_content_key(&kem_key, &wrapped, &id)?;
//! assert_eq!(convergent::open_blob(&key2, &blob)?, plaintext);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod convergent;
mod error;
pub mod oprf;
pub mod pow;
pub mod threshold;

pub use convergent::{
    BlobHeader, BlobOpener, BlobSealer, ContentKey, Sha256Hasher, blob_id, content_digest,
    content_key, open_blob, seal_blob, unwrap_content_key, wrap_content_key,
};
pub use error::{Error, Result};
pub use oprf::{BlindState, ServerKey, blind, blind_evaluate, blind_with_scalar, finalize};
pub use pow::{
    Challenge, MerkleBuilder, MerkleTree, Proof, ProofBuilder, ProofLeaf, prove, verify,
};
pub use threshold::{
    KeyShare, MAX_SHARES, ShareEvaluation, combine, combine_public_shares, deal, evaluate_share,
    verify_share,
};

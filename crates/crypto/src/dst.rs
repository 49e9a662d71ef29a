//! Every domain-separation tag, HKDF salt and HKDF info string used by the
//! crate, in one place. `docs/crypto.md` lists the same bytes; changing any
//! of them is a breaking change of the wire format (bump the version tags).

/// RFC 9380 `hash_to_curve` DST for the second generator `U`
/// (suite `P256_XMD:SHA-256_SSWU_RO_`), message [`GENERATOR_U_MSG`].
pub const GENERATOR_U_DST: &[u8] = b"SESPHR-V1-P256_XMD:SHA-256_SSWU_RO_GENERATOR-U";
/// Message hashed to the curve to obtain `U`.
pub const GENERATOR_U_MSG: &[u8] = b"U";

/// Hash-to-scalar DST for the capsule challenge `h = H(E, V)`.
pub const CAPSULE_DST: &[u8] = b"SESPHR-V1-H2S-CAPSULE";
/// Hash-to-scalar DST for the non-interactive shared secret `d`.
pub const SHARED_SECRET_DST: &[u8] = b"SESPHR-V1-H2S-SHARED-SECRET";
/// Hash-to-scalar DST for the Shamir share index `x_i` of a kfrag.
pub const POLYNOMIAL_ARG_DST: &[u8] = b"SESPHR-V1-H2S-POLYNOMIAL-ARG";
/// Hash-to-scalar DST for the challenge of the proof of re-encryption.
pub const CFRAG_PROOF_DST: &[u8] = b"SESPHR-V1-H2S-CFRAG-PROOF";

/// Prefix hashed into the id of a kfrag meant for one re-encryption node
/// (see `node_kfrag_id`).
pub const KFRAG_NODE_ID_PREFIX: &[u8] = b"SESPHR-V1-KFRAG-NODE-ID";
/// Prefix of the message signed (ECDSA P-256/SHA-256) for every kfrag.
pub const KFRAG_SIGNATURE_PREFIX: &[u8] = b"SESPHR-V1-KFRAG-SIGNATURE";

/// Prefix of the message a user signs to prove possession of its
/// registered kfrag-signing key when asking for a certificate
/// (`key_proof`).
pub const KEY_PROOF_PREFIX: &[u8] = b"SESPHR-V1-KEY-PROOF";

/// Prefix of the message the owner signs over a record header (the
/// unsigned header bytes and the binding follow).
pub const RECORD_HEADER_SIGNATURE_PREFIX: &[u8] = b"SESPHR-V2-RECORD-HEADER-SIGNATURE";
/// Prefix of the message the owner signs over each record segment.
pub const RECORD_SEGMENT_SIGNATURE_PREFIX: &[u8] = b"SESPHR-V2-RECORD-SEGMENT-SIGNATURE";

/// HKDF-SHA256 `info` prefix deriving the 32-byte KEM key from the shared
/// point (the capsule bytes follow).
pub const KEM_KEY_INFO: &[u8] = b"SESPHR-V1-KEM-KEY";
/// HKDF-SHA256 `info` deriving the AES-256-GCM record key from the KEM key.
pub const DEM_KEY_INFO: &[u8] = b"SESPHR-V1-DEM-KEY-AES256GCM-STREAM-BE32";

/// HKDF-SHA256 salt used to extract from the patient's master secret.
pub const MASTER_SALT: &[u8] = b"SESPHR-V1-MASTER-SECRET";
/// HKDF-SHA256 `info` prefix of a partition key (partition and epoch follow).
pub const PARTITION_KEY_INFO: &[u8] = b"SESPHR-V1-PARTITION-KEY";
/// HKDF-SHA256 `info` of the owner's kfrag-signing key.
pub const SIGNING_KEY_INFO: &[u8] = b"SESPHR-V1-KFRAG-SIGNING-KEY";

/// Prefix of the check value every Shamir share of a master secret carries
/// (`SHA-256(prefix || set_id || secret)`).
pub const SHAMIR_CHECK_PREFIX: &[u8] = b"SESPHR-V1-SHAMIR-CHECK";
/// HKDF-SHA256 `info` deriving the AES-256-GCM key of a sealed share from
/// the KEM key of its capsule.
pub const SEALED_SHARE_KEY_INFO: &[u8] = b"SESPHR-V1-SEALED-SHARE-AES256GCM";

//! The crate's error type.
//!
//! Cryptographic failures are opaque on purpose: a failed decryption or
//! proof says *that* it failed, never which byte, segment or leaf was wrong.
//! Decoding errors name the type being decoded, since they concern public
//! bytes only.

/// Errors returned by this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a valid encoding of the named type (wrong length,
    /// bad magic or version, point not on the curve or the identity,
    /// non-canonical scalar, out-of-range count, trailing bytes, ...).
    #[error("malformed {0} encoding")]
    Malformed(&'static str),

    /// A caller-supplied parameter is outside its documented range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),

    /// The OPRF input hashed to the identity element (RFC 9497
    /// `InvalidInputError`; happens with negligible probability).
    #[error("invalid OPRF input")]
    InvalidInput,

    /// `DeriveKeyPair` found no non-zero scalar in 256 attempts (RFC 9497
    /// `DeriveKeyPairError`; happens with negligible probability).
    #[error("OPRF key derivation failed")]
    DeriveKeyPair,

    /// Authenticated decryption (blob segment or wrapped key) failed.
    #[error("decryption failed")]
    DecryptionFailed,

    /// A blob ended before its final segment.
    #[error("blob truncated: final segment missing")]
    Truncated,

    /// A proof of ownership did not verify.
    #[error("proof of ownership verification failed")]
    VerificationFailed,

    /// A threshold OPRF share evaluation did not verify against the node's
    /// index and public share (wrong evaluated element, or a proof made for
    /// another node, public share or blinded element).
    #[error("threshold OPRF share evaluation failed verification")]
    ShareVerificationFailed,
}

/// Shorthand for `Result<T, sesphr_dedup::Error>`.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// Maps an error of the shared STREAM sealer/opener
    /// (`sesphr_crypto::stream`) to this crate's error, variant for variant,
    /// so that blob callers see no sign of where the segment code lives.
    pub(crate) fn from_stream(err: sesphr_crypto::Error) -> Self {
        use sesphr_crypto::Error as E;
        match err {
            E::Malformed(what) => Self::Malformed(what),
            E::InvalidParameter(what) => Self::InvalidParameter(what),
            E::Truncated => Self::Truncated,
            E::VerificationFailed => Self::VerificationFailed,
            // `DecryptionFailed`, and any later variant: opaque on purpose.
            _ => Self::DecryptionFailed,
        }
    }
}

//! The crate's error type.
//!
//! Cryptographic failures are deliberately opaque: a failed verification or
//! decryption says *that* it failed, never *why* (which check, which segment
//! byte, which share). Decoding errors name the type being decoded, because
//! they concern public bytes only.

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a valid encoding of the named type (wrong length,
    /// point not on the curve or the identity, non-canonical scalar, bad
    /// magic/version, out-of-range field, trailing bytes, ...).
    #[error("malformed {0} encoding")]
    Malformed(&'static str),

    /// A signature, commitment, capsule check or proof of re-encryption did
    /// not verify.
    #[error("verification failed")]
    VerificationFailed,

    /// Decapsulation or authenticated decryption failed. No detail is given
    /// on purpose.
    #[error("decryption failed")]
    DecryptionFailed,

    /// A record ended before its final segment: it was truncated.
    #[error("record truncated: final segment missing")]
    Truncated,

    /// Secret shares cannot be combined: too few, of different splits, two
    /// with one index, or they do not rebuild the secret they were split
    /// from.
    #[error("cannot combine the shares: {0}")]
    Shares(&'static str),

    /// A caller-supplied parameter is out of its documented range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
}

/// Shorthand for `Result<T, sesphr_crypto::Error>`.
pub type Result<T> = core::result::Result<T, Error>;

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        let kind = match err {
            Error::Malformed(_) | Error::Truncated | Error::Shares(_) => {
                std::io::ErrorKind::InvalidData
            }
            Error::VerificationFailed | Error::DecryptionFailed => std::io::ErrorKind::InvalidData,
            Error::InvalidParameter(_) => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, err)
    }
}

//! Convergent (message-locked) encryption of deduplicated blobs.
//!
//! The key of a blob is derived from its content, so equal plaintexts give
//! equal ciphertext blobs and the storage can keep one copy:
//!
//! ```text
//! oprf_input   = SHA-256(plaintext)                      (content_digest)
//! oprf_output  = OPRF(server key, oprf_input)            (crate::oprf)
//! content_key  = HKDF-SHA256(salt = none, IKM = oprf_output,
//!                            info = "SeSPHR-v1 content key", L = 32)
//! header       = "SPHB" || 0x01 || u32be(segment_size)   (9 bytes)
//! blob_key     = HKDF-SHA256(salt = none, IKM = content_key,
//!                            info = "SeSPHR-v1 blob key" || header, L = 32)
//! nonce_prefix = HKDF-SHA256(salt = none, IKM = content_key,
//!                            info = "SeSPHR-v1 blob nonce prefix" || header, L = 7)
//! blob         = header || segment_0 || ... || segment_k
//! segment_i    = AES-256-GCM(blob_key, nonce_i, aad = header, plaintext_i)
//!                (ciphertext || 16-byte tag)
//! nonce_i      = nonce_prefix || u32be(i) || last_flag (0x00; 0x01 for segment_k)
//! blob_id      = SHA-256(blob)
//! ```
//!
//! "salt = none" is the RFC 5869 default: 32 zero bytes. Every plaintext
//! segment but the last is exactly `segment_size` bytes; the last is
//! `0..=segment_size` bytes (an empty plaintext is one empty last segment,
//! a 25-byte blob). This is RustCrypto `aead-stream`'s `StreamBE32`, the
//! same STREAM construction as records.
//!
//! **Why a deterministic nonce is safe here.** A content key is a function
//! of the plaintext, so it encrypts exactly one message; the blob key and
//! nonce prefix additionally depend on the header, so the same content under
//! another segment size uses another key. Within one blob STREAM gives each
//! segment a distinct nonce. No (key, nonce) pair ever protects two
//! different plaintexts. What convergent encryption *does* reveal, by
//! design, is equality of contents: anyone who can guess the whole
//! plaintext can confirm the guess — which is why the key comes from a
//! rate-limited OPRF rather than from a plain hash.
//!
//! Blobs only deduplicate when they use the same segment size: use
//! [`DEFAULT_BLOB_SEGMENT_SIZE`] unless every client agrees otherwise.
//!
//! The content key travels with each record, wrapped under the record's
//! KEM key ([`wrap_content_key`]):
//!
//! ```text
//! wrap_key = HKDF-SHA256(salt = none, IKM = kem_key,
//!                        info = "SeSPHR-v1 content key wrap", L = 32)
//! wrapped  = nonce (12 random bytes) || AES-256-GCM(wrap_key, nonce, aad, content_key)
//!            (60 bytes: 12 + 32 + 16-byte tag)
//! ```

use core::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sesphr_crypto::stream::{self, SegmentCipher, StreamOpener, StreamSealer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::oprf::OprfOutput;

/// HKDF `info` deriving the content key from the OPRF output.
pub const CONTENT_KEY_INFO: &[u8] = b"SeSPHR-v1 content key";
/// HKDF `info` prefix (the 9 header bytes follow) of the blob AES key.
pub const BLOB_KEY_INFO: &[u8] = b"SeSPHR-v1 blob key";
/// HKDF `info` prefix (the 9 header bytes follow) of the blob nonce prefix.
pub const BLOB_NONCE_PREFIX_INFO: &[u8] = b"SeSPHR-v1 blob nonce prefix";
/// HKDF `info` deriving the key-wrapping key from a KEM key.
pub const WRAP_KEY_INFO: &[u8] = b"SeSPHR-v1 content key wrap";

/// First four bytes of every blob.
pub const BLOB_MAGIC: [u8; 4] = *b"SPHB";
/// The only blob format version this crate writes and reads.
pub const BLOB_VERSION: u8 = 1;
/// Length of the blob header (`magic || version || segment_size`).
pub const BLOB_HEADER_LEN: usize = 9;
/// Default (and recommended) plaintext segment size: 1 MiB.
pub const DEFAULT_BLOB_SEGMENT_SIZE: u32 = 1 << 20;
/// Smallest allowed segment size: 4 KiB.
pub const MIN_BLOB_SEGMENT_SIZE: u32 = 4 << 10;
/// Largest allowed segment size: 16 MiB.
pub const MAX_BLOB_SEGMENT_SIZE: u32 = 16 << 20;
/// Length of the STREAM nonce prefix.
pub const NONCE_PREFIX_LEN: usize = stream::NONCE_PREFIX_LEN;
/// AES-GCM tag length, added to every segment.
pub const TAG_LEN: usize = stream::TAG_LEN;
/// Length of a content key.
pub const CONTENT_KEY_LEN: usize = 32;
/// Length of a wrapped content key: nonce (12) || ciphertext (32) || tag (16).
pub const WRAPPED_KEY_LEN: usize = 60;
/// Length of a blob id (SHA-256).
pub const BLOB_ID_LEN: usize = 32;

const WRAP_NONCE_LEN: usize = 12;

fn hkdf_expand(ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    Hkdf::<Sha256>::new(None, ikm)
        .expand_multi_info(info, out)
        .expect("output length is valid for HKDF-SHA256");
}

/// The 32-byte key of one blob, derived from its content. Zeroized on drop;
/// `Debug` is redacted; equality is constant-time.
#[derive(Clone)]
pub struct ContentKey([u8; CONTENT_KEY_LEN]);

impl ContentKey {
    /// Wraps 32 raw key bytes (e.g. after [`unwrap_content_key`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; CONTENT_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::Malformed("content key"))?;
        Ok(Self(arr))
    }

    /// A copy of the raw key bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; CONTENT_KEY_LEN]> {
        Zeroizing::new(self.0)
    }

    /// Derives the AES key and nonce prefix of a blob with this header.
    fn derive(
        &self,
        header: &BlobHeader,
    ) -> (Zeroizing<[u8; stream::KEY_LEN]>, [u8; NONCE_PREFIX_LEN]) {
        let header = header.to_bytes();
        let mut key = Zeroizing::new([0u8; stream::KEY_LEN]);
        hkdf_expand(&self.0, &[BLOB_KEY_INFO, &header], &mut key[..]);
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        hkdf_expand(&self.0, &[BLOB_NONCE_PREFIX_INFO, &header], &mut prefix);
        (key, prefix)
    }
}

impl PartialEq for ContentKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ContentKey {}

impl Drop for ContentKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for ContentKey {}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// `content_key = HKDF-SHA256(salt = none, IKM = oprf_output, info = "SeSPHR-v1 content key", L = 32)`.
pub fn content_key(oprf_output: &OprfOutput) -> ContentKey {
    let mut key = [0u8; CONTENT_KEY_LEN];
    hkdf_expand(oprf_output, &[CONTENT_KEY_INFO], &mut key);
    ContentKey(key)
}

/// `SHA-256(plaintext)`: the recommended OPRF input for a plaintext. Use
/// [`Sha256Hasher`] to compute it in a streaming fashion.
pub fn content_digest(plaintext: &[u8]) -> [u8; 32] {
    Sha256::digest(plaintext).into()
}

/// `blob_id = SHA-256(blob)`, where `blob` is the whole ciphertext blob
/// (header included). Use [`Sha256Hasher`] to compute it in a streaming
/// fashion.
pub fn blob_id(blob: &[u8]) -> [u8; BLOB_ID_LEN] {
    Sha256::digest(blob).into()
}

/// Streaming SHA-256, for [`blob_id`] and [`content_digest`] over data fed in
/// chunks of any size.
#[derive(Clone, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    /// An empty hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Absorbs `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The SHA-256 digest of everything absorbed.
    pub fn finalize(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

/// The 9-byte blob header: `"SPHB" || 0x01 || u32be(segment_size)`. It is
/// the associated data of every segment and an input of the key derivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobHeader {
    segment_size: u32,
}

impl BlobHeader {
    /// A header for `segment_size`-byte plaintext segments (4 KiB..=16 MiB).
    pub fn new(segment_size: u32) -> Result<Self> {
        if !(MIN_BLOB_SEGMENT_SIZE..=MAX_BLOB_SEGMENT_SIZE).contains(&segment_size) {
            return Err(Error::InvalidParameter(
                "blob segment size must be 4 KiB..=16 MiB",
            ));
        }
        Ok(Self { segment_size })
    }

    /// Plaintext segment size in bytes.
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// The exact header bytes.
    pub fn to_bytes(&self) -> [u8; BLOB_HEADER_LEN] {
        let mut out = [0u8; BLOB_HEADER_LEN];
        out[..4].copy_from_slice(&BLOB_MAGIC);
        out[4] = BLOB_VERSION;
        out[5..].copy_from_slice(&self.segment_size.to_be_bytes());
        out
    }

    /// Decodes exactly one header (no trailing bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "blob header";
        let arr: [u8; BLOB_HEADER_LEN] = bytes.try_into().map_err(|_| Error::Malformed(W))?;
        if arr[..4] != BLOB_MAGIC || arr[4] != BLOB_VERSION {
            return Err(Error::Malformed(W));
        }
        let size = u32::from_be_bytes([arr[5], arr[6], arr[7], arr[8]]);
        Self::new(size).map_err(|_| Error::Malformed(W))
    }

    fn segment_len(&self) -> usize {
        self.segment_size as usize
    }
}

impl Default for BlobHeader {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_BLOB_SEGMENT_SIZE,
        }
    }
}

/// Push-style, deterministic blob encryption. Write
/// [`header_bytes`](Self::header_bytes) first, then the output of
/// [`seal_segment`](Self::seal_segment) for every full segment and of
/// [`seal_last`](Self::seal_last) for the tail. Memory is bounded by the
/// segment the caller passes in.
pub struct BlobSealer {
    header: BlobHeader,
    stream: StreamSealer,
}

impl BlobSealer {
    /// A sealer with the default segment size (1 MiB).
    pub fn new(key: &ContentKey) -> Self {
        Self::with_header(key, BlobHeader::default())
    }

    /// A sealer with another segment size (4 KiB..=16 MiB).
    pub fn with_segment_size(key: &ContentKey, segment_size: u32) -> Result<Self> {
        Ok(Self::with_header(key, BlobHeader::new(segment_size)?))
    }

    fn with_header(key: &ContentKey, header: BlobHeader) -> Self {
        let (blob_key, prefix) = key.derive(&header);
        Self {
            stream: StreamSealer::new(
                &blob_key,
                &prefix,
                &header.to_bytes(),
                header.segment_len(),
                "blob has too many segments",
            ),
            header,
        }
    }

    /// The blob's header.
    pub fn header(&self) -> &BlobHeader {
        &self.header
    }

    /// The 9 header bytes that start the blob.
    pub fn header_bytes(&self) -> [u8; BLOB_HEADER_LEN] {
        self.header.to_bytes()
    }

    /// Seals one non-last segment; `plaintext` must be exactly
    /// `segment_size` bytes. Returns `segment_size + 16` bytes.
    pub fn seal_segment(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.stream
            .seal_segment(plaintext)
            .map_err(Error::from_stream)
    }

    /// In-place [`seal_segment`](Self::seal_segment): `buf` holds the
    /// plaintext and receives the ciphertext (16 bytes longer).
    pub fn seal_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.stream
            .seal_segment_in_place(buf)
            .map_err(Error::from_stream)
    }

    /// The same sealer, sealing each segment at an index the caller gives,
    /// from any thread (segment `i` comes out exactly as the `i`-th of the
    /// sequential sealer). Only before the first segment was sealed here.
    /// **Seal each index once**: see [`SegmentCipher`].
    pub fn into_parallel(self) -> Result<SegmentCipher> {
        self.stream.into_parallel().map_err(Error::from_stream)
    }

    /// Seals the last segment (`0..=segment_size` bytes) and ends the blob.
    pub fn seal_last(self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.stream.seal_last(plaintext).map_err(Error::from_stream)
    }

    /// In-place [`seal_last`](Self::seal_last).
    pub fn seal_last_in_place(self, buf: &mut Vec<u8>) -> Result<()> {
        self.stream
            .seal_last_in_place(buf)
            .map_err(Error::from_stream)
    }
}

impl fmt::Debug for BlobSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobSealer")
            .field("header", &self.header)
            .field("position", &self.stream.position())
            .finish_non_exhaustive()
    }
}

/// Push-style blob decryption: [`push`](Self::push) the blob bytes (header
/// included) in chunks of any size and receive each plaintext segment as
/// soon as it authenticates; [`finish`](Self::finish) authenticates the last
/// segment and fails if the blob was truncated. Buffers at most one
/// ciphertext segment plus one byte.
///
/// After any error the opener is poisoned and every later call fails.
pub struct BlobOpener {
    key: ContentKey,
    /// The header bytes pushed so far, until all 9 have arrived.
    header_buf: Vec<u8>,
    state: Option<(BlobHeader, StreamOpener)>,
    poisoned: bool,
}

impl BlobOpener {
    /// An opener for a blob sealed under `key` (any segment size; the
    /// header is read from the pushed bytes).
    pub fn new(key: &ContentKey) -> Self {
        Self {
            key: key.clone(),
            header_buf: Vec::with_capacity(BLOB_HEADER_LEN),
            state: None,
            poisoned: false,
        }
    }

    /// The blob's header, once its 9 bytes have been pushed.
    pub fn header(&self) -> Option<&BlobHeader> {
        self.state.as_ref().map(|(h, _)| h)
    }

    /// Buffers `data` and returns every plaintext segment it completes. A
    /// segment is known not to be the last one only once a byte of the next
    /// one arrives, so up to one segment stays buffered until then.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.poisoned {
            return Err(Error::DecryptionFailed);
        }
        if self.state.is_none() {
            let n = (BLOB_HEADER_LEN - self.header_buf.len()).min(data.len());
            self.header_buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header_buf.len() < BLOB_HEADER_LEN {
                return Ok(Vec::new());
            }
            let header = BlobHeader::from_bytes(&self.header_buf).inspect_err(|_| {
                self.poisoned = true;
            })?;
            let (blob_key, prefix) = self.key.derive(&header);
            let opener =
                StreamOpener::new(&blob_key, &prefix, &header.to_bytes(), header.segment_len());
            self.state = Some((header, opener));
        }
        let (_, opener) = self.state.as_mut().expect("header parsed");
        opener.push(data).map_err(Error::from_stream)
    }

    /// The same opener, opening each segment at an index the caller gives,
    /// from any thread, and the blob's header. Only once exactly the
    /// header's 9 bytes were pushed, nothing more: the segments that follow
    /// are the caller's to cut (each `segment_size + 16` bytes but the
    /// last) and open in order of index.
    pub fn into_parallel(self) -> Result<(BlobHeader, SegmentCipher)> {
        if self.poisoned {
            return Err(Error::DecryptionFailed);
        }
        let Some((header, opener)) = self.state else {
            return Err(Error::Truncated);
        };
        Ok((header, opener.into_parallel().map_err(Error::from_stream)?))
    }

    /// Authenticates and returns the last segment. Fails with
    /// [`Error::Truncated`] if the blob ended before its last segment and
    /// [`Error::DecryptionFailed`] if it was tampered with.
    pub fn finish(self) -> Result<Vec<u8>> {
        if self.poisoned {
            return Err(Error::DecryptionFailed);
        }
        let Some((_, opener)) = self.state else {
            return Err(Error::Truncated);
        };
        opener.finish().map_err(Error::from_stream)
    }
}

impl fmt::Debug for BlobOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (position, buffered) = match &self.state {
            Some((_, opener)) => (opener.position(), opener.buffered()),
            None => (0, self.header_buf.len()),
        };
        f.debug_struct("BlobOpener")
            .field("header", &self.header())
            .field("position", &position)
            .field("buffered", &buffered)
            .finish_non_exhaustive()
    }
}

/// Encrypts a whole in-memory plaintext into a blob with the default
/// segment size. For large data use [`BlobSealer`] segment by segment.
pub fn seal_blob(key: &ContentKey, plaintext: &[u8]) -> Vec<u8> {
    seal_blob_with_segment_size(key, plaintext, DEFAULT_BLOB_SEGMENT_SIZE)
        .expect("the default segment size is valid")
}

/// [`seal_blob`] with another segment size (4 KiB..=16 MiB).
pub fn seal_blob_with_segment_size(
    key: &ContentKey,
    plaintext: &[u8],
    segment_size: u32,
) -> Result<Vec<u8>> {
    let mut sealer = BlobSealer::with_segment_size(key, segment_size)?;
    let seg = segment_size as usize;
    let segments = plaintext.len().div_ceil(seg).max(1);
    let mut out = Vec::with_capacity(BLOB_HEADER_LEN + plaintext.len() + segments * TAG_LEN);
    out.extend_from_slice(&sealer.header_bytes());
    // The last segment is the remainder, or a full one if the length is a
    // non-zero multiple of the segment size.
    let last_start = (segments - 1) * seg;
    for chunk in plaintext[..last_start].chunks(seg) {
        out.extend_from_slice(&sealer.seal_segment(chunk)?);
    }
    out.extend_from_slice(&sealer.seal_last(&plaintext[last_start..])?);
    Ok(out)
}

/// Decrypts a whole in-memory blob. For large blobs use [`BlobOpener`].
pub fn open_blob(key: &ContentKey, blob: &[u8]) -> Result<Vec<u8>> {
    let mut opener = BlobOpener::new(key);
    let mut out = Vec::new();
    for segment in opener.push(blob)? {
        out.extend_from_slice(&segment);
    }
    out.extend_from_slice(&opener.finish()?);
    Ok(out)
}

/// Wraps a content key under a 32-byte KEM-derived key (e.g. the key
/// encapsulated in a record's capsule), binding `aad` (e.g. the record id).
/// Returns `nonce (12, random) || ciphertext (32) || tag (16)`.
pub fn wrap_content_key(
    rng: &mut (impl CryptoRng + ?Sized),
    kem_key: &[u8; 32],
    key: &ContentKey,
    aad: &[u8],
) -> [u8; WRAPPED_KEY_LEN] {
    let aead = wrap_aead(kem_key);
    let mut nonce = [0u8; WRAP_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ct = aead
        .encrypt(&nonce.into(), Payload { msg: &key.0, aad })
        .expect("AES-GCM encryption of 32 bytes cannot fail");
    let mut out = [0u8; WRAPPED_KEY_LEN];
    out[..WRAP_NONCE_LEN].copy_from_slice(&nonce);
    out[WRAP_NONCE_LEN..].copy_from_slice(&ct);
    out
}

/// Inverse of [`wrap_content_key`]. Fails with [`Error::Malformed`] unless
/// `wrapped` is 60 bytes, and with [`Error::DecryptionFailed`] if the key,
/// the AAD or the bytes do not match.
pub fn unwrap_content_key(kem_key: &[u8; 32], wrapped: &[u8], aad: &[u8]) -> Result<ContentKey> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(Error::Malformed("wrapped content key"));
    }
    let (nonce, ct) = wrapped.split_at(WRAP_NONCE_LEN);
    let nonce: [u8; WRAP_NONCE_LEN] = nonce.try_into().expect("split at 12");
    let aead = wrap_aead(kem_key);
    let pt = Zeroizing::new(
        aead.decrypt(&nonce.into(), Payload { msg: ct, aad })
            .map_err(|_| Error::DecryptionFailed)?,
    );
    ContentKey::from_bytes(&pt)
}

fn wrap_aead(kem_key: &[u8; 32]) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_expand(kem_key, &[WRAP_KEY_INFO], &mut key[..]);
    Aes256Gcm::new(&(*key).into())
}

//! Record encryption: a self-describing, owner-signed header followed by
//! AES-256-GCM STREAM segments (RustCrypto `aead-stream`, `StreamBE32`),
//! each signed by the owner too.
//!
//! ```text
//! record    = header || segment_0 || sig_0 || ... || segment_k || sig_k
//! header    = unsigned || owner_sig
//! owner_sig = ECDSA-P256-SHA256(owner, HEADER_SIGNATURE_PREFIX || unsigned || binding)
//! segment_i = AES-256-GCM(dem_key, nonce_i, aad = header, plaintext_i) (ciphertext || 16-byte tag)
//! nonce_i   = nonce_prefix (7) || u32be(i) || last_flag (0x00, or 0x01 for segment_k)
//! sig_i     = ECDSA-P256-SHA256(owner, SEGMENT_SIGNATURE_PREFIX || SHA-256(header)
//!                               || u32be(i) || last_flag || segment_i)
//! ```
//!
//! Why every segment is signed, not only the header: whoever can open a
//! record (every grantee, the owner's devices) knows its AES key, and GCM is
//! not committing for key holders — they can write other segments, even
//! with the same tags, under a genuine header. The per-segment signature
//! makes every released byte the owner's, and readers verify each segment
//! before releasing it, so streaming stays bounded. `binding` is empty for
//! records keyed by their capsule; a deduplicated record's header binds the
//! blob it points to and its wrapped content key (`sesphr-dedup`).
//!
//! Every plaintext segment but the last is exactly `segment_size` bytes; the
//! last one is `0..=segment_size` bytes. Memory use of every API here is
//! bounded by a couple of segments, never by the record size.
//!
//! ```
//! use sesphr_crypto::rand_core::{OsRng, TryRngCore};
//! use sesphr_crypto::{
//!     decapsulate_original, decrypt_record, encapsulate, encrypt_record, RecordHeader,
//!     RecordOpener, RecordSealer, SecretKey, SigningKey,
//! };
//!
//! # fn main() -> std::io::Result<()> {
//! let mut rng = OsRng.unwrap_err();
//! let owner = SecretKey::generate(&mut rng);
//! let signer = SigningKey::generate(&mut rng);
//! let (capsule, kem_key) = encapsulate(&mut rng, &owner.public_key());
//! let header =
//!     RecordHeader::new(&mut rng, b"rec-1", b"patient-1", "medical", 0, capsule, &signer)?;
//!
//! let plaintext = vec![7u8; 3_000_000];
//! let mut record = Vec::new();
//! encrypt_record(&plaintext[..], &mut record, RecordSealer::new(header, &kem_key, &signer)?)?;
//!
//! let owner_vk = signer.verifying_key();
//! let mut out = Vec::new();
//! decrypt_record(&record[..], &mut out, |h| {
//!     let key = decapsulate_original(&owner, h.capsule())?;
//!     RecordOpener::new(h.clone(), &key, &owner_vk)
//! })?;
//! assert_eq!(out, plaintext);
//!
//! // A truncated record fails.
//! record.truncate(record.len() - 1);
//! assert!(decrypt_record(&record[..], std::io::sink(), |h| {
//!     RecordOpener::new(h.clone(), &decapsulate_original(&owner, h.capsule())?, &owner_vk)
//! })
//! .is_err());
//! # Ok(())
//! # }
//! ```

use core::fmt;
use std::io::{self, Read, Write};

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::capsule::{Capsule, KemKey};
use crate::dst;
use crate::error::{Error, Result};
use crate::keys::{SIGNATURE_LEN, Signature, SigningKey, VerifyingKey};
use crate::master::validate_partition;
use crate::stream::{Lookahead, SegmentCipher};
pub use crate::stream::{NONCE_PREFIX_LEN, TAG_LEN};

/// First four bytes of every record.
pub const MAGIC: [u8; 4] = *b"SPHR";
/// The only record format version this crate writes and reads (2: owner
/// signatures on the header and on every segment; version 1 had none and
/// is refused, so that a server cannot downgrade a record to unsigned).
pub const FORMAT_VERSION: u8 = 2;
/// Default plaintext segment size: 1 MiB.
pub const DEFAULT_SEGMENT_SIZE: u32 = 1 << 20;
/// Smallest allowed segment size: 4 KiB.
pub const MIN_SEGMENT_SIZE: u32 = 4 << 10;
/// Largest allowed segment size: 16 MiB.
pub const MAX_SEGMENT_SIZE: u32 = 16 << 20;
/// Longest record id / owner id, in bytes.
pub const MAX_ID_LEN: usize = 1024;
/// Length of the fixed part of a header (`magic || version || header_len`).
pub const HEADER_PREFIX_LEN: usize = 7;
/// Bytes every segment adds to its plaintext: the GCM tag and the owner's
/// signature.
pub const SEGMENT_OVERHEAD: usize = TAG_LEN + SIGNATURE_LEN;
/// Upper bound on an encoded header's length.
pub const MAX_HEADER_LEN: usize = HEADER_PREFIX_LEN
    + 3 * 2
    + 2 * MAX_ID_LEN
    + crate::MAX_PARTITION_LEN
    + 4
    + 1
    + Capsule::LEN
    + 4
    + NONCE_PREFIX_LEN
    + SIGNATURE_LEN;

/// Ciphertext length (everything after the header) of a `len`-byte
/// plaintext in `segment_size`-byte segments. An empty plaintext is one
/// empty last segment.
pub fn ciphertext_len(len: u64, segment_size: u32) -> u64 {
    let segments = len.div_ceil(u64::from(segment_size)).max(1);
    len + segments * SEGMENT_OVERHEAD as u64
}

/// Where the record's AES-256-GCM key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DemKeySource {
    /// `dem_key = HKDF-SHA256(kem_key, info = DEM_KEY_INFO)`, `kem_key` being
    /// the key encapsulated in the header's capsule (byte `0x00`).
    Kem = 0,
    /// The key is supplied by the caller, e.g. a content-derived key wrapped
    /// elsewhere (byte `0x01`). The header is still bound as AAD.
    External = 1,
}

/// A record header before its owner signed it: every field but the
/// signature. [`sign`](Self::sign) turns it into a [`RecordHeader`].
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderDraft {
    parts: HeaderParts,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// `unsigned` of the module docs, with `header_len` already counting
    /// the signature to come.
    unsigned: Vec<u8>,
}

impl HeaderDraft {
    /// A draft with a fresh random nonce prefix, the default segment size
    /// (1 MiB) and [`DemKeySource::Kem`].
    ///
    /// `record_id` and `owner_id` are 1..=1024 bytes, `partition` a valid
    /// partition name (1..=255 bytes).
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        record_id: &[u8],
        owner_id: &[u8],
        partition: &str,
        epoch: u32,
        capsule: Capsule,
    ) -> Result<Self> {
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut nonce_prefix);
        Self::from_parts(
            HeaderParts {
                record_id: record_id.to_vec(),
                owner_id: owner_id.to_vec(),
                partition: partition.to_owned(),
                epoch,
                key_source: DemKeySource::Kem,
                capsule,
                segment_size: DEFAULT_SEGMENT_SIZE,
            },
            nonce_prefix,
        )
    }

    /// The same draft with another segment size (4 KiB..=16 MiB).
    pub fn with_segment_size(mut self, segment_size: u32) -> Result<Self> {
        self.parts.segment_size = segment_size;
        Self::from_parts(self.parts, self.nonce_prefix)
    }

    /// The same draft with another key source.
    pub fn with_key_source(mut self, key_source: DemKeySource) -> Self {
        self.parts.key_source = key_source;
        Self::from_parts(self.parts, self.nonce_prefix).expect("only the key source changed")
    }

    /// The bytes the owner's signature covers (before the binding): the
    /// whole header but its signature.
    pub fn unsigned_bytes(&self) -> &[u8] {
        &self.unsigned
    }

    /// Signs the draft with the owner's key, binding `binding` (empty for a
    /// record keyed by its capsule; see the module docs).
    pub fn sign(self, owner: &SigningKey, binding: &[u8]) -> RecordHeader {
        let signature = owner.sign_prehashed(&header_digest(&self.unsigned, binding));
        let mut encoded = self.unsigned;
        encoded.extend_from_slice(&signature);
        debug_assert_eq!(
            usize::from(u16::from_be_bytes([encoded[5], encoded[6]])),
            encoded.len()
        );
        let header_hash = Sha256::digest(&encoded).into();
        RecordHeader {
            parts: self.parts,
            nonce_prefix: self.nonce_prefix,
            signature,
            encoded,
            header_hash,
        }
    }

    pub(crate) fn from_parts(
        parts: HeaderParts,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Self> {
        validate_id(&parts.record_id, "record id must be 1..=1024 bytes")?;
        validate_id(&parts.owner_id, "owner id must be 1..=1024 bytes")?;
        validate_partition(&parts.partition)?;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&parts.segment_size) {
            return Err(Error::InvalidParameter(
                "segment size must be 4 KiB..=16 MiB",
            ));
        }
        let unsigned = encode_unsigned(&parts, &nonce_prefix);
        Ok(Self {
            parts,
            nonce_prefix,
            unsigned,
        })
    }
}

impl fmt::Debug for HeaderDraft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDraft")
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

/// `SHA-256(HEADER_SIGNATURE_PREFIX || unsigned || binding)`: the digest
/// the owner's header signature is made over.
fn header_digest(unsigned: &[u8], binding: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(dst::RECORD_HEADER_SIGNATURE_PREFIX)
        .chain_update(unsigned)
        .chain_update(binding)
        .finalize()
        .into()
}

fn encode_unsigned(parts: &HeaderParts, nonce_prefix: &[u8; NONCE_PREFIX_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&[0, 0]); // header_len, patched below
    for field in [
        &parts.record_id[..],
        &parts.owner_id,
        parts.partition.as_bytes(),
    ] {
        let len = u16::try_from(field.len()).expect("validated field length");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&parts.epoch.to_be_bytes());
    out.push(parts.key_source as u8);
    out.extend_from_slice(&parts.capsule.to_bytes());
    out.extend_from_slice(&parts.segment_size.to_be_bytes());
    out.extend_from_slice(nonce_prefix);
    // The total counts the signature that will follow.
    let total = u16::try_from(out.len() + SIGNATURE_LEN).expect("header is shorter than 64 KiB");
    out[5..7].copy_from_slice(&total.to_be_bytes());
    out
}

/// The record header, signed by the record's owner. It is authenticated as
/// the associated data of every segment, so changing any byte of it makes
/// every segment fail; its signature is checked by
/// [`verify`](Self::verify) (which [`RecordOpener`] does for you).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordHeader {
    parts: HeaderParts,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    signature: [u8; SIGNATURE_LEN],
    encoded: Vec<u8>,
    /// `SHA-256(encoded)`, which every segment signature covers.
    header_hash: [u8; 32],
}

impl RecordHeader {
    /// A signed header of a record keyed by its capsule: a fresh random
    /// nonce prefix, the default segment size (1 MiB), an empty binding.
    /// [`HeaderDraft`] builds any other.
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        record_id: &[u8],
        owner_id: &[u8],
        partition: &str,
        epoch: u32,
        capsule: Capsule,
        owner: &SigningKey,
    ) -> Result<Self> {
        Ok(HeaderDraft::new(rng, record_id, owner_id, partition, epoch, capsule)?.sign(owner, &[]))
    }

    /// Checks the owner's signature over this header and `binding`. Every
    /// reader must do this (with the owner's verifying key from a source
    /// it trusts) before it believes any field.
    pub fn verify(&self, owner: &VerifyingKey, binding: &[u8]) -> Result<()> {
        let signature = Signature::from_bytes(&self.signature)?;
        owner.verify_prehashed(&header_digest(self.unsigned_bytes(), binding), &signature)
    }

    /// The exact header bytes (also the AAD of every segment).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// The exact header bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// The header bytes the owner's signature covers (all but the
    /// signature itself).
    pub fn unsigned_bytes(&self) -> &[u8] {
        &self.encoded[..self.encoded.len() - SIGNATURE_LEN]
    }

    /// Decodes a header; `bytes` must be exactly one header (no trailing
    /// bytes). Decoding does not verify the signature: see
    /// [`verify`](Self::verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const W: &str = "record header";
        let total = Self::declared_len(bytes)?;
        if total != bytes.len() {
            return Err(Error::Malformed(W));
        }
        let mut r = Cursor(&bytes[HEADER_PREFIX_LEN..]);
        let record_id = r.field()?.to_vec();
        let owner_id = r.field()?.to_vec();
        let partition = std::str::from_utf8(r.field()?)
            .map_err(|_| Error::Malformed(W))?
            .to_owned();
        let epoch = u32::from_be_bytes(r.array()?);
        let key_source = match r.array::<1>()?[0] {
            0 => DemKeySource::Kem,
            1 => DemKeySource::External,
            _ => return Err(Error::Malformed(W)),
        };
        let capsule =
            Capsule::from_bytes(r.take(Capsule::LEN)?).map_err(|_| Error::Malformed(W))?;
        let segment_size = u32::from_be_bytes(r.array()?);
        let nonce_prefix = r.array::<NONCE_PREFIX_LEN>()?;
        let signature = r.array::<SIGNATURE_LEN>()?;
        if !r.0.is_empty() {
            return Err(Error::Malformed(W));
        }
        let draft = HeaderDraft::from_parts(
            HeaderParts {
                record_id,
                owner_id,
                partition,
                epoch,
                key_source,
                capsule,
                segment_size,
            },
            nonce_prefix,
        )
        .map_err(|_| Error::Malformed(W))?;
        debug_assert_eq!(draft.unsigned, bytes[..bytes.len() - SIGNATURE_LEN]);
        Ok(Self {
            parts: draft.parts,
            nonce_prefix,
            signature,
            encoded: bytes.to_vec(),
            header_hash: Sha256::digest(bytes).into(),
        })
    }

    /// Checks the 7-byte prefix (`magic || version || header_len`) and
    /// returns the total header length it declares.
    pub fn declared_len(prefix: &[u8]) -> Result<usize> {
        const W: &str = "record header";
        if prefix.len() < HEADER_PREFIX_LEN || prefix[..4] != MAGIC || prefix[4] != FORMAT_VERSION {
            return Err(Error::Malformed(W));
        }
        let total = usize::from(u16::from_be_bytes([prefix[5], prefix[6]]));
        if !(HEADER_PREFIX_LEN + SIGNATURE_LEN..=MAX_HEADER_LEN).contains(&total) {
            return Err(Error::Malformed(W));
        }
        Ok(total)
    }

    /// Reads exactly one header from the start of a record stream.
    pub fn read_from(reader: &mut impl Read) -> io::Result<Self> {
        let mut buf = vec![0u8; HEADER_PREFIX_LEN];
        reader.read_exact(&mut buf).map_err(truncated_header)?;
        let total = Self::declared_len(&buf)?;
        buf.resize(total, 0);
        reader
            .read_exact(&mut buf[HEADER_PREFIX_LEN..])
            .map_err(truncated_header)?;
        Ok(Self::from_bytes(&buf)?)
    }

    /// Record identifier.
    pub fn record_id(&self) -> &[u8] {
        &self.parts.record_id
    }
    /// Owner (patient) identifier.
    pub fn owner_id(&self) -> &[u8] {
        &self.parts.owner_id
    }
    /// Partition name.
    pub fn partition(&self) -> &str {
        &self.parts.partition
    }
    /// Partition key epoch.
    pub fn epoch(&self) -> u32 {
        self.parts.epoch
    }
    /// Where the DEM key comes from.
    pub fn key_source(&self) -> DemKeySource {
        self.parts.key_source
    }
    /// The capsule encapsulating the KEM key under the partition key.
    pub fn capsule(&self) -> &Capsule {
        &self.parts.capsule
    }
    /// Plaintext segment size in bytes.
    pub fn segment_size(&self) -> u32 {
        self.parts.segment_size
    }
    /// STREAM nonce prefix.
    pub fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }

    fn segment_len(&self) -> usize {
        self.parts.segment_size as usize
    }

    /// `SHA-256(SEGMENT_SIGNATURE_PREFIX || SHA-256(header) || u32be(i) ||
    /// last || ciphertext)`: the digest segment `i`'s signature covers.
    fn segment_digest(&self, index: u32, last: bool, ciphertext: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update(dst::RECORD_SEGMENT_SIGNATURE_PREFIX)
            .chain_update(self.header_hash)
            .chain_update(index.to_be_bytes())
            .chain_update([u8::from(last)])
            .chain_update(ciphertext)
            .finalize()
            .into()
    }
}

impl fmt::Debug for RecordHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordHeader")
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HeaderParts {
    pub(crate) record_id: Vec<u8>,
    pub(crate) owner_id: Vec<u8>,
    pub(crate) partition: String,
    pub(crate) epoch: u32,
    pub(crate) key_source: DemKeySource,
    pub(crate) capsule: Capsule,
    pub(crate) segment_size: u32,
}

impl fmt::Debug for HeaderParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordHeader")
            .field("record_id", &String::from_utf8_lossy(&self.record_id))
            .field("owner_id", &String::from_utf8_lossy(&self.owner_id))
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .field("key_source", &self.key_source)
            .field("segment_size", &self.segment_size)
            .finish_non_exhaustive()
    }
}

fn validate_id(id: &[u8], msg: &'static str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::InvalidParameter(msg));
    }
    Ok(())
}

fn truncated_header(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        Error::Malformed("record header").into()
    } else {
        err
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Malformed("record header"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn field(&mut self) -> Result<&'a [u8]> {
        let len = u16::from_be_bytes(self.array()?);
        self.take(usize::from(len))
    }
}

/// The 32-byte AES-256-GCM key of a record. Zeroized on drop; `Debug` is
/// redacted.
#[derive(Clone)]
pub struct DemKey([u8; DemKey::LEN]);

impl DemKey {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// `HKDF-SHA256(salt = "", IKM = kem_key, info = DEM_KEY_INFO)`.
    pub fn from_kem_key(kem_key: &KemKey) -> Self {
        let hk = Hkdf::<Sha256>::new(None, kem_key.as_bytes());
        let mut okm = [0u8; Self::LEN];
        hk.expand(dst::DEM_KEY_INFO, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(okm)
    }

    /// Wraps 32 caller-supplied key bytes (for [`DemKeySource::External`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; Self::LEN] = bytes.try_into().map_err(|_| Error::Malformed("DEM key"))?;
        Ok(Self(arr))
    }

    /// A copy of the raw key bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; Self::LEN]> {
        Zeroizing::new(self.0)
    }

    fn cipher(&self, header: &RecordHeader) -> SegmentCipher {
        SegmentCipher::new(
            &self.0,
            &header.nonce_prefix,
            &header.encoded,
            header.segment_len(),
            "record has too many segments",
        )
    }
}

impl Drop for DemKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for DemKey {}

impl fmt::Debug for DemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DemKey(<redacted>)")
    }
}

/// The DEM key of `header`, if `key` is of the kind its key source names.
fn key_for(header: &RecordHeader, key: KeyRef<'_>) -> Result<DemKey> {
    let (source, key) = match key {
        KeyRef::Kem(k) => (DemKeySource::Kem, DemKey::from_kem_key(k)),
        KeyRef::Dem(k) => (DemKeySource::External, k.clone()),
    };
    if header.key_source() != source {
        return Err(Error::InvalidParameter(
            "key type does not match the header's key source",
        ));
    }
    Ok(key)
}

enum KeyRef<'a> {
    Kem(&'a KemKey),
    Dem(&'a DemKey),
}

/// Push-style record encryption, usable from async code: feed full
/// segments with [`seal_segment`](Self::seal_segment), then the tail with
/// [`seal_last`](Self::seal_last). Write [`RecordHeader::as_bytes`] first.
/// Every sealed segment comes out with the owner's signature appended
/// ([`SEGMENT_OVERHEAD`] bytes longer than its plaintext).
/// [`into_parallel`](Self::into_parallel) seals on several threads instead.
pub struct RecordSealer {
    segments: RecordSegmentSealer,
    position: u32,
}

impl RecordSealer {
    /// Seals under the key encapsulated in the header's capsule
    /// (requires [`DemKeySource::Kem`]), signing with `owner` (the key that
    /// signed the header).
    pub fn new(header: RecordHeader, kem_key: &KemKey, owner: &SigningKey) -> Result<Self> {
        Self::with_key(header, KeyRef::Kem(kem_key), owner)
    }

    /// Seals under an explicitly supplied key (requires
    /// [`DemKeySource::External`]).
    pub fn with_dem_key(
        header: RecordHeader,
        dem_key: &DemKey,
        owner: &SigningKey,
    ) -> Result<Self> {
        Self::with_key(header, KeyRef::Dem(dem_key), owner)
    }

    fn with_key(header: RecordHeader, key: KeyRef<'_>, owner: &SigningKey) -> Result<Self> {
        let cipher = key_for(&header, key)?.cipher(&header);
        Ok(Self {
            segments: RecordSegmentSealer {
                header,
                cipher,
                owner: owner.clone(),
            },
            position: 0,
        })
    }

    /// The header to write before the first segment.
    pub fn header(&self) -> &RecordHeader {
        &self.segments.header
    }

    /// The same sealer, sealing each segment at an index the caller gives,
    /// from any thread. Only before the first segment was sealed here, so
    /// that no index is sealed twice by the two.
    pub fn into_parallel(self) -> Result<RecordSegmentSealer> {
        if self.position != 0 {
            return Err(Error::InvalidParameter(
                "a record sealer goes parallel before its first segment only",
            ));
        }
        Ok(self.segments)
    }

    /// Seals one non-last segment; `plaintext` must be exactly
    /// `segment_size` bytes.
    pub fn seal_segment(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = with_room(plaintext);
        self.seal_segment_in_place(&mut buf)?;
        Ok(buf)
    }

    /// In-place variant of [`seal_segment`](Self::seal_segment): `buf` holds
    /// the plaintext and receives the signed ciphertext.
    pub fn seal_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.segments.seal_at(self.position, false, buf)?;
        self.position += 1;
        Ok(())
    }

    /// Seals the last segment (`0..=segment_size` bytes) and ends the record.
    pub fn seal_last(self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = with_room(plaintext);
        self.seal_last_in_place(&mut buf)?;
        Ok(buf)
    }

    /// In-place variant of [`seal_last`](Self::seal_last).
    pub fn seal_last_in_place(self, buf: &mut Vec<u8>) -> Result<()> {
        self.segments.seal_at(self.position, true, buf)
    }
}

/// A record's sealer for segments at any index, shared by reference
/// between threads ([`RecordSealer::into_parallel`]): segment `i` comes out
/// exactly as the `i`-th segment of the sequential sealer, signature
/// included (ECDSA here is deterministic, RFC 6979).
///
/// **Seal each index once**, with one plaintext, and exactly one segment
/// as the last: see [`SegmentCipher`].
pub struct RecordSegmentSealer {
    header: RecordHeader,
    cipher: SegmentCipher,
    owner: SigningKey,
}

impl RecordSegmentSealer {
    /// The header to write before the first segment.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Seals segment `index` in place and appends the owner's signature:
    /// `buf` holds exactly `segment_size` plaintext bytes (`0..=` that if
    /// `last`) and receives [`SEGMENT_OVERHEAD`] more.
    pub fn seal_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<()> {
        self.cipher.seal_at(index, last, buf)?;
        append_signature(&self.owner, &self.header, index, last, buf);
        Ok(())
    }
}

impl fmt::Debug for RecordSegmentSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSegmentSealer")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Appends the owner's signature of sealed segment `index` to it.
fn append_signature(
    owner: &SigningKey,
    header: &RecordHeader,
    index: u32,
    last: bool,
    buf: &mut Vec<u8>,
) {
    let sig = owner.sign_prehashed(&header.segment_digest(index, last, buf));
    buf.extend_from_slice(&sig);
}

fn with_room(plaintext: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext.len() + SEGMENT_OVERHEAD);
    buf.extend_from_slice(plaintext);
    buf
}

impl fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSealer")
            .field("header", &self.segments.header)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Push-style record decryption: [`push`](Self::push) ciphertext bytes (the
/// segments, after the header) in chunks of any size and receive plaintext
/// segments as soon as they are authenticated *and* their owner signature
/// verified; [`finish`](Self::finish) does the same for the last segment
/// and fails if the record was truncated. Nothing unverified is ever
/// returned. After any error the opener is poisoned.
pub struct RecordOpener {
    segments: RecordSegmentOpener,
    /// Signed ciphertext not yet opened: at most one unit plus one byte.
    ahead: Lookahead,
    position: u32,
    poisoned: bool,
}

impl RecordOpener {
    /// Opens with the key encapsulated in the header's capsule (requires
    /// [`DemKeySource::Kem`]). Verifies the header's signature by `owner`
    /// (empty binding) first: a header the owner did not sign is refused.
    pub fn new(header: RecordHeader, kem_key: &KemKey, owner: &VerifyingKey) -> Result<Self> {
        header.verify(owner, &[])?;
        Self::with_key(header, KeyRef::Kem(kem_key), owner)
    }

    /// Opens with an explicitly supplied key (requires
    /// [`DemKeySource::External`]), after verifying the header's signature
    /// by `owner` over `binding`.
    pub fn with_dem_key(
        header: RecordHeader,
        dem_key: &DemKey,
        owner: &VerifyingKey,
        binding: &[u8],
    ) -> Result<Self> {
        header.verify(owner, binding)?;
        Self::with_key(header, KeyRef::Dem(dem_key), owner)
    }

    fn with_key(header: RecordHeader, key: KeyRef<'_>, owner: &VerifyingKey) -> Result<Self> {
        let cipher = key_for(&header, key)?.cipher(&header);
        let unit = header.segment_len() + SEGMENT_OVERHEAD;
        Ok(Self {
            segments: RecordSegmentOpener {
                header,
                cipher,
                owner: *owner,
            },
            ahead: Lookahead::new(unit),
            position: 0,
            poisoned: false,
        })
    }

    /// The record's header.
    pub fn header(&self) -> &RecordHeader {
        &self.segments.header
    }

    /// The same opener, opening each signed segment at an index the caller
    /// gives, from any thread. Only before anything was pushed or opened
    /// here.
    pub fn into_parallel(self) -> Result<RecordSegmentOpener> {
        self.check_poison()?;
        if self.position != 0 || !self.ahead.is_empty() {
            return Err(Error::InvalidParameter(
                "a record opener goes parallel before its first segment only",
            ));
        }
        Ok(self.segments)
    }

    /// Length of one signed non-last ciphertext segment.
    fn unit(&self) -> usize {
        self.segments.unit()
    }

    /// Buffers `data` and returns every plaintext segment it completes.
    /// A segment is only known not to be the last one once a byte of the
    /// next arrives, so up to one segment stays buffered until then.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.check_poison()?;
        let mut out = Vec::new();
        while !data.is_empty() {
            data = self.ahead.fill(data);
            if let Some(segment) = self.try_open_next()? {
                out.push(segment);
            }
        }
        Ok(out)
    }

    /// Opens one whole signed non-last segment (`segment_size` +
    /// [`SEGMENT_OVERHEAD`] bytes) in place, for transports that frame
    /// segments themselves. Do not mix with [`push`](Self::push).
    pub fn open_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.check_poison()?;
        if !self.ahead.is_empty() || buf.len() != self.unit() {
            return Err(Error::InvalidParameter(
                "in-place opening takes exactly one full segment and no pushed bytes",
            ));
        }
        self.open_unit(buf)
    }

    /// Opens the last signed segment in place and ends the record.
    pub fn open_last_in_place(mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.check_poison()?;
        if !self.ahead.is_empty() {
            return Err(Error::InvalidParameter(
                "in-place opening takes exactly one full segment and no pushed bytes",
            ));
        }
        self.ahead.set_rest(core::mem::take(buf));
        *buf = self.finish()?;
        Ok(())
    }

    /// Verifies and returns the last segment. Fails with
    /// [`Error::Truncated`] if the record ended before its last segment,
    /// [`Error::DecryptionFailed`] if it does not authenticate under the
    /// record's key and [`Error::VerificationFailed`] if it does but the
    /// owner did not sign it (someone holding the key wrote it).
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.check_poison()?;
        let mut last = self.ahead.take_rest();
        self.segments.open_at(self.position, true, &mut last)?;
        Ok(last)
    }

    fn check_poison(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::DecryptionFailed)
        } else {
            Ok(())
        }
    }

    /// Opens `unit` (ciphertext || signature) in place as the non-last
    /// segment at the current position; poisons the opener if it fails.
    fn open_unit(&mut self, unit: &mut Vec<u8>) -> Result<()> {
        match self.segments.open_at(self.position, false, unit) {
            Ok(()) => {
                self.position += 1;
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// If more than one signed segment is buffered, verifies and opens the
    /// first (as a non-last segment) and returns its plaintext.
    fn try_open_next(&mut self) -> Result<Option<Vec<u8>>> {
        self.check_poison()?;
        let Some(mut segment) = self.ahead.next_unit() else {
            return Ok(None);
        };
        self.open_unit(&mut segment)?;
        Ok(Some(segment))
    }
}

/// A record's opener for signed segments at any index, shared by
/// reference between threads ([`RecordOpener::into_parallel`]). The header
/// signature was verified when the [`RecordOpener`] was made.
pub struct RecordSegmentOpener {
    header: RecordHeader,
    cipher: SegmentCipher,
    owner: VerifyingKey,
}

impl RecordSegmentOpener {
    /// The record's header.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Length of one signed non-last ciphertext segment.
    pub fn unit(&self) -> usize {
        self.header.segment_len() + SEGMENT_OVERHEAD
    }

    /// Opens signed segment `index` (ciphertext || signature) in place and
    /// checks the owner's signature over its ciphertext; `buf` holds the
    /// plaintext only if both hold, and is cleared of it otherwise. A
    /// non-last segment must be exactly [`unit`](Self::unit) bytes. Errors
    /// are those of [`RecordOpener::finish`] (for the last segment) and
    /// [`RecordOpener::push`] (for the others).
    pub fn open_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<()> {
        if !last && buf.len() != self.unit() {
            return Err(Error::InvalidParameter(
                "in-place opening takes exactly one full segment and no pushed bytes",
            ));
        }
        if buf.len() < SEGMENT_OVERHEAD {
            return Err(Error::Truncated);
        }
        let signature = buf.split_off(buf.len() - SIGNATURE_LEN);
        let digest = self.header.segment_digest(index, last, buf);
        let res = self
            .cipher
            .open_at(index, last, buf)
            .and_then(|()| verify_segment(&self.owner, &digest, &signature));
        if res.is_err() {
            buf.zeroize();
        }
        res
    }
}

fn verify_segment(owner: &VerifyingKey, digest: &[u8; 32], signature: &[u8]) -> Result<()> {
    let signature = Signature::from_bytes(signature).map_err(|_| Error::VerificationFailed)?;
    owner.verify_prehashed(digest, &signature)
}

impl fmt::Debug for RecordSegmentOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSegmentOpener")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordOpener")
            .field("header", &self.segments.header)
            .field("position", &self.position)
            .field("buffered", &self.ahead.len())
            .finish_non_exhaustive()
    }
}

/// A [`Write`] adapter: writes the header, then seals everything written
/// into segments. Call [`finish`](Self::finish) to seal the last segment;
/// dropping the writer without it leaves a truncated (undecryptable) record.
pub struct RecordWriter<W: Write> {
    inner: W,
    sealer: RecordSealer,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// Writes the header to `inner` and returns the writer.
    pub fn new(mut inner: W, sealer: RecordSealer) -> io::Result<Self> {
        inner.write_all(sealer.header().as_bytes())?;
        let cap = sealer.header().segment_len() + SEGMENT_OVERHEAD;
        Ok(Self {
            inner,
            sealer,
            buf: Vec::with_capacity(cap),
        })
    }

    /// Seals the last segment, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mut buf = core::mem::take(&mut self.buf);
        self.sealer.seal_last_in_place(&mut buf)?;
        self.inner.write_all(&buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for RecordWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let seg = self.sealer.header().segment_len();
        if self.buf.len() == seg {
            // More data follows a full segment: it is not the last one.
            self.sealer.seal_segment_in_place(&mut self.buf)?;
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        let n = (seg - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> fmt::Debug for RecordWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordWriter")
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

/// A [`Read`] adapter yielding the plaintext of a record whose header has
/// already been read (see [`RecordHeader::read_from`]). Returns `Ok(0)` only
/// after the last segment verified; truncation, tampering or a missing owner
/// signature is an [`io::ErrorKind::InvalidData`] error wrapping [`Error`].
pub struct RecordReader<R: Read> {
    inner: R,
    opener: Option<RecordOpener>,
    plain: Vec<u8>,
    pos: usize,
}

impl<R: Read> RecordReader<R> {
    /// `inner` must be positioned just after the header.
    pub fn new(inner: R, opener: RecordOpener) -> Self {
        Self {
            inner,
            opener: Some(opener),
            plain: Vec::new(),
            pos: 0,
        }
    }

    /// Reads ciphertext until one plaintext segment is available or the
    /// record ends.
    fn refill(&mut self) -> io::Result<()> {
        let Some(opener) = self.opener.as_mut() else {
            return Ok(());
        };
        // Hand the drained plaintext buffer back for reuse.
        opener.ahead.recycle(core::mem::take(&mut self.plain));
        self.pos = 0;
        if opener.ahead.fill_from(&mut self.inner)? {
            // EOF: the buffered bytes are the last segment.
            let opener = self.opener.take().expect("checked above");
            self.plain = opener.finish()?;
        } else {
            self.plain = opener
                .try_open_next()?
                .expect("a full segment and one more byte are buffered");
        }
        Ok(())
    }
}

impl<R: Read> Read for RecordReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.plain.len() {
            if self.opener.is_none() {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = (self.plain.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> fmt::Debug for RecordReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordReader")
            .field("opener", &self.opener)
            .finish_non_exhaustive()
    }
}

/// Encrypts everything `input` yields into `output` (header first) with
/// bounded memory. Returns the number of plaintext bytes.
pub fn encrypt_record(
    mut input: impl Read,
    mut output: impl Write,
    mut sealer: RecordSealer,
) -> io::Result<u64> {
    output.write_all(sealer.header().as_bytes())?;
    let seg = sealer.header().segment_len();
    let want = u64::try_from(seg + 1).expect("segment fits in u64");
    let mut buf = Vec::with_capacity(seg + SEGMENT_OVERHEAD + 1);
    let mut carry: Option<u8> = None;
    let mut total = 0u64;
    loop {
        buf.clear();
        buf.extend(carry.take());
        let have = buf.len() as u64;
        (&mut input).take(want - have).read_to_end(&mut buf)?;
        if buf.len() == seg + 1 {
            // More plaintext follows this segment: it is not the last one.
            carry = buf.pop();
            sealer.seal_segment_in_place(&mut buf)?;
            output.write_all(&buf)?;
            total += seg as u64;
        } else {
            total += buf.len() as u64;
            sealer.seal_last_in_place(&mut buf)?;
            output.write_all(&buf)?;
            output.flush()?;
            return Ok(total);
        }
    }
}

/// Decrypts a whole record from `input` into `output` with bounded memory.
/// `open` receives the decoded header and returns the opener (typically
/// after decapsulating `header.capsule()`; the opener checks the owner's
/// signatures). Returns the header.
///
/// Plaintext is written as each segment verifies; if an error is returned,
/// discard whatever was written.
pub fn decrypt_record(
    mut input: impl Read,
    mut output: impl Write,
    open: impl FnOnce(&RecordHeader) -> Result<RecordOpener>,
) -> io::Result<RecordHeader> {
    let header = RecordHeader::read_from(&mut input)?;
    let mut opener = open(&header)?;
    if opener.header() != &header {
        return Err(Error::InvalidParameter("opener was built for another header").into());
    }
    loop {
        if opener.ahead.fill_from(&mut input)? {
            output.write_all(&opener.finish()?)?;
            output.flush()?;
            return Ok(header);
        }
        let segment = opener
            .try_open_next()?
            .expect("a full segment and one more byte are buffered");
        output.write_all(&segment)?;
        opener.ahead.recycle(segment);
    }
}

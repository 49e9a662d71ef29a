//! Record encryption: a self-describing header followed by AES-256-GCM
//! STREAM segments (RustCrypto `aead-stream`, `StreamBE32`).
//!
//! ```text
//! record  = header || segment_0 || ... || segment_k
//! segment = AES-256-GCM(dem_key, nonce_i, aad = header bytes, plaintext_i) (ciphertext || 16-byte tag)
//! nonce_i = nonce_prefix (7) || u32be(i) || last_flag (0x00, or 0x01 for segment_k)
//! ```
//!
//! Every plaintext segment but the last is exactly `segment_size` bytes; the
//! last one is `0..=segment_size` bytes. Memory use of every API here is
//! bounded by a couple of segments, never by the record size.
//!
//! ```
//! use sesphr_crypto::rand_core::{OsRng, TryRngCore};
//! use sesphr_crypto::{
//!     decapsulate_original, decrypt_record, encapsulate, encrypt_record, RecordHeader,
//!     RecordOpener, RecordSealer, SecretKey,
//! };
//!
//! # fn main() -> std::io::Result<()> {
//! let mut rng = OsRng.unwrap_err();
//! let owner = SecretKey::generate(&mut rng);
//! let (capsule, kem_key) = encapsulate(&mut rng, &owner.public_key());
//! let header = RecordHeader::new(&mut rng, b"rec-1", b"patient-1", "medical", 0, capsule)?;
//!
//! let plaintext = vec![7u8; 3_000_000];
//! let mut record = Vec::new();
//! encrypt_record(&plaintext[..], &mut record, RecordSealer::new(header, &kem_key)?)?;
//!
//! let mut out = Vec::new();
//! decrypt_record(&record[..], &mut out, |h| {
//!     let key = decapsulate_original(&owner, h.capsule())?;
//!     RecordOpener::new(h.clone(), &key)
//! })?;
//! assert_eq!(out, plaintext);
//!
//! // A truncated record fails.
//! record.truncate(record.len() - 1);
//! assert!(decrypt_record(&record[..], std::io::sink(), |h| {
//!     RecordOpener::new(h.clone(), &decapsulate_original(&owner, h.capsule())?)
//! })
//! .is_err());
//! # Ok(())
//! # }
//! ```

use core::fmt;
use std::io::{self, Read, Write};

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::capsule::{Capsule, KemKey};
use crate::dst;
use crate::error::{Error, Result};
use crate::master::validate_partition;
pub use crate::stream::{NONCE_PREFIX_LEN, TAG_LEN};
use crate::stream::{StreamOpener, StreamSealer};

/// First four bytes of every record.
pub const MAGIC: [u8; 4] = *b"SPHR";
/// The only record format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
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
/// Upper bound on an encoded header's length.
pub const MAX_HEADER_LEN: usize = HEADER_PREFIX_LEN
    + 3 * 2
    + 2 * MAX_ID_LEN
    + crate::MAX_PARTITION_LEN
    + 4
    + 1
    + Capsule::LEN
    + 4
    + NONCE_PREFIX_LEN;

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

/// The record header. It is authenticated as the associated data of every
/// segment, so changing any byte of it makes every segment fail.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordHeader {
    record_id: Vec<u8>,
    owner_id: Vec<u8>,
    partition: String,
    epoch: u32,
    key_source: DemKeySource,
    capsule: Capsule,
    segment_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    encoded: Vec<u8>,
}

impl RecordHeader {
    /// A header with a fresh random nonce prefix, the default segment size
    /// (1 MiB) and [`DemKeySource::Kem`].
    ///
    /// `record_id` and `owner_id` are 1..=1024 bytes, `partition` 1..=255 bytes.
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

    /// The same header with another segment size (4 KiB..=16 MiB).
    pub fn with_segment_size(self, segment_size: u32) -> Result<Self> {
        let nonce_prefix = self.nonce_prefix;
        let mut parts = self.into_parts();
        parts.segment_size = segment_size;
        Self::from_parts(parts, nonce_prefix)
    }

    /// The same header with another key source.
    pub fn with_key_source(self, key_source: DemKeySource) -> Self {
        let nonce_prefix = self.nonce_prefix;
        let mut parts = self.into_parts();
        parts.key_source = key_source;
        Self::from_parts(parts, nonce_prefix).expect("only the key source changed")
    }

    fn into_parts(self) -> HeaderParts {
        HeaderParts {
            record_id: self.record_id,
            owner_id: self.owner_id,
            partition: self.partition,
            epoch: self.epoch,
            key_source: self.key_source,
            capsule: self.capsule,
            segment_size: self.segment_size,
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
        let mut header = Self {
            record_id: parts.record_id,
            owner_id: parts.owner_id,
            partition: parts.partition,
            epoch: parts.epoch,
            key_source: parts.key_source,
            capsule: parts.capsule,
            segment_size: parts.segment_size,
            nonce_prefix,
            encoded: Vec::new(),
        };
        header.encoded = header.encode();
        Ok(header)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&[0, 0]); // header_len, patched below
        for field in [
            &self.record_id[..],
            &self.owner_id,
            self.partition.as_bytes(),
        ] {
            let len = u16::try_from(field.len()).expect("validated field length");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(self.key_source as u8);
        out.extend_from_slice(&self.capsule.to_bytes());
        out.extend_from_slice(&self.segment_size.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        let total = u16::try_from(out.len()).expect("header is shorter than 64 KiB");
        out[5..7].copy_from_slice(&total.to_be_bytes());
        out
    }

    /// The exact header bytes (also the AAD of every segment).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// The exact header bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// Decodes a header; `bytes` must be exactly one header (no trailing bytes).
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
        if !r.0.is_empty() {
            return Err(Error::Malformed(W));
        }
        let header = Self::from_parts(
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
        debug_assert_eq!(header.encoded, bytes);
        Ok(header)
    }

    /// Checks the 7-byte prefix (`magic || version || header_len`) and
    /// returns the total header length it declares.
    pub fn declared_len(prefix: &[u8]) -> Result<usize> {
        const W: &str = "record header";
        if prefix.len() < HEADER_PREFIX_LEN || prefix[..4] != MAGIC || prefix[4] != FORMAT_VERSION {
            return Err(Error::Malformed(W));
        }
        let total = usize::from(u16::from_be_bytes([prefix[5], prefix[6]]));
        if !(HEADER_PREFIX_LEN..=MAX_HEADER_LEN).contains(&total) {
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
        &self.record_id
    }
    /// Owner (patient) identifier.
    pub fn owner_id(&self) -> &[u8] {
        &self.owner_id
    }
    /// Partition name.
    pub fn partition(&self) -> &str {
        &self.partition
    }
    /// Partition key epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
    /// Where the DEM key comes from.
    pub fn key_source(&self) -> DemKeySource {
        self.key_source
    }
    /// The capsule encapsulating the KEM key under the partition key.
    pub fn capsule(&self) -> &Capsule {
        &self.capsule
    }
    /// Plaintext segment size in bytes.
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }
    /// STREAM nonce prefix.
    pub fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }

    fn segment_len(&self) -> usize {
        self.segment_size as usize
    }
}

impl fmt::Debug for RecordHeader {
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

pub(crate) struct HeaderParts {
    pub(crate) record_id: Vec<u8>,
    pub(crate) owner_id: Vec<u8>,
    pub(crate) partition: String,
    pub(crate) epoch: u32,
    pub(crate) key_source: DemKeySource,
    pub(crate) capsule: Capsule,
    pub(crate) segment_size: u32,
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

    fn sealer(&self, header: &RecordHeader) -> StreamSealer {
        StreamSealer::new(
            &self.0,
            &header.nonce_prefix,
            &header.encoded,
            header.segment_len(),
            "record has too many segments",
        )
    }

    fn opener(&self, header: &RecordHeader) -> StreamOpener {
        StreamOpener::new(
            &self.0,
            &header.nonce_prefix,
            &header.encoded,
            header.segment_len(),
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
    if header.key_source != source {
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
pub struct RecordSealer {
    header: RecordHeader,
    stream: StreamSealer,
}

impl RecordSealer {
    /// Seals under the key encapsulated in the header's capsule
    /// (requires [`DemKeySource::Kem`]).
    pub fn new(header: RecordHeader, kem_key: &KemKey) -> Result<Self> {
        Self::with_key(header, KeyRef::Kem(kem_key))
    }

    /// Seals under an explicitly supplied key (requires
    /// [`DemKeySource::External`]).
    pub fn with_dem_key(header: RecordHeader, dem_key: &DemKey) -> Result<Self> {
        Self::with_key(header, KeyRef::Dem(dem_key))
    }

    fn with_key(header: RecordHeader, key: KeyRef<'_>) -> Result<Self> {
        let stream = key_for(&header, key)?.sealer(&header);
        Ok(Self { header, stream })
    }

    /// The header to write before the first segment.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Seals one non-last segment; `plaintext` must be exactly
    /// `segment_size` bytes.
    pub fn seal_segment(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.stream.seal_segment(plaintext)
    }

    /// In-place variant of [`seal_segment`](Self::seal_segment): `buf` holds
    /// the plaintext and receives the ciphertext (16 bytes longer).
    pub fn seal_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.stream.seal_segment_in_place(buf)
    }

    /// Seals the last segment (`0..=segment_size` bytes) and ends the record.
    pub fn seal_last(self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.stream.seal_last(plaintext)
    }

    /// In-place variant of [`seal_last`](Self::seal_last).
    pub fn seal_last_in_place(self, buf: &mut Vec<u8>) -> Result<()> {
        self.stream.seal_last_in_place(buf)
    }
}

impl fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSealer")
            .field("header", &self.header)
            .field("position", &self.stream.position())
            .finish_non_exhaustive()
    }
}

/// Push-style record decryption: [`push`](Self::push) ciphertext bytes (the
/// segments, after the header) in chunks of any size and receive plaintext
/// segments as soon as they are authenticated; [`finish`](Self::finish)
/// authenticates the last segment and fails if the record was truncated.
pub struct RecordOpener {
    header: RecordHeader,
    stream: StreamOpener,
}

impl RecordOpener {
    /// Opens with the key encapsulated in the header's capsule (requires
    /// [`DemKeySource::Kem`]).
    pub fn new(header: RecordHeader, kem_key: &KemKey) -> Result<Self> {
        Self::with_key(header, KeyRef::Kem(kem_key))
    }

    /// Opens with an explicitly supplied key (requires
    /// [`DemKeySource::External`]).
    pub fn with_dem_key(header: RecordHeader, dem_key: &DemKey) -> Result<Self> {
        Self::with_key(header, KeyRef::Dem(dem_key))
    }

    fn with_key(header: RecordHeader, key: KeyRef<'_>) -> Result<Self> {
        let stream = key_for(&header, key)?.opener(&header);
        Ok(Self { header, stream })
    }

    /// The record's header.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Buffers `data` and returns every plaintext segment it completes.
    /// A segment is only known not to be the last one once a byte of the
    /// next arrives, so up to one segment stays buffered until then.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.stream.push(data)
    }

    /// Opens one whole non-last ciphertext segment (`segment_size + 16`
    /// bytes) in place, for transports that frame segments themselves.
    /// Do not mix with [`push`](Self::push).
    pub fn open_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.stream.open_segment_in_place(buf)
    }

    /// Opens the last ciphertext segment in place and ends the record.
    pub fn open_last_in_place(self, buf: &mut Vec<u8>) -> Result<()> {
        self.stream.open_last_in_place(buf)
    }

    /// Authenticates and returns the last segment. Fails with
    /// [`Error::Truncated`] if the record ended before its last segment.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.stream.finish()
    }
}

impl fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordOpener")
            .field("header", &self.header)
            .field("position", &self.stream.position())
            .field("buffered", &self.stream.buffered())
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
        let cap = sealer.header().segment_len() + TAG_LEN;
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
/// after the last segment authenticated; truncation or tampering is an
/// [`io::ErrorKind::InvalidData`] error wrapping [`Error`].
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
        opener.stream.recycle(core::mem::take(&mut self.plain));
        self.pos = 0;
        if opener.stream.fill_from(&mut self.inner)? {
            // EOF: the buffered bytes are the last segment.
            let opener = self.opener.take().expect("checked above");
            self.plain = opener.finish()?;
        } else {
            self.plain = opener
                .stream
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
    let mut buf = Vec::with_capacity(seg + TAG_LEN + 1);
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
/// after decapsulating `header.capsule()`). Returns the header.
///
/// Plaintext is written as each segment authenticates; if an error is
/// returned, discard whatever was written.
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
        if opener.stream.fill_from(&mut input)? {
            output.write_all(&opener.finish()?)?;
            output.flush()?;
            return Ok(header);
        }
        let segment = opener
            .stream
            .try_open_next()?
            .expect("a full segment and one more byte are buffered");
        output.write_all(&segment)?;
        opener.stream.recycle(segment);
    }
}

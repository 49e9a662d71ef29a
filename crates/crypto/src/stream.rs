//! The AES-256-GCM STREAM segment sealer and opener shared by records and
//! deduplicated blobs (RustCrypto `aead-stream`, `StreamBE32`).
//!
//! ```text
//! segment_i = AES-256-GCM(key, nonce_i, aad, plaintext_i) (ciphertext || 16-byte tag)
//! nonce_i   = nonce_prefix (7) || u32be(i) || last_flag (0x00, or 0x01 for segment_k)
//! ```
//!
//! Every plaintext segment but the last is exactly `segment_len` bytes; the
//! last one is `0..=segment_len` bytes. The last flag is what makes a
//! truncated stream detectable, so the last segment can only be sealed or
//! opened by consuming the sealer or opener.
//!
//! The formats built on this (the record header, the blob header) bind
//! themselves as the associated data of every segment; this module only
//! knows the bytes.

use core::fmt;

use std::io::{self, Read};

use aead_stream::StreamPrimitive;
use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// AES-256-GCM key length.
pub const KEY_LEN: usize = 32;
/// Length of the STREAM nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;
/// AES-GCM tag length, added to every segment.
pub const TAG_LEN: usize = 16;

type Stream = aead_stream::StreamBE32<Aes256Gcm>;

/// What a sealer and its opener must agree on, plus the position of the
/// next segment.
struct Segments {
    stream: Stream,
    aad: Vec<u8>,
    segment_len: usize,
    position: u32,
}

impl Segments {
    fn new(
        key: &[u8; KEY_LEN],
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
        aad: &[u8],
        segment_len: usize,
    ) -> Self {
        let aead = Aes256Gcm::new(&(*key).into());
        Self {
            stream: <Stream as aead_stream::NewStream<Aes256Gcm>>::from_aead(
                aead,
                &(*nonce_prefix).into(),
            ),
            aad: aad.to_vec(),
            segment_len,
            position: 0,
        }
    }
}

/// Push-style STREAM encryption: feed full segments with
/// [`seal_segment`](Self::seal_segment), then the tail with
/// [`seal_last`](Self::seal_last), which consumes the sealer.
pub struct StreamSealer {
    shared: Segments,
    too_many_segments: &'static str,
}

impl StreamSealer {
    /// A sealer of `segment_len`-byte segments under `key` and
    /// `nonce_prefix`, binding `aad` to every segment.
    ///
    /// `too_many_segments` is the [`Error::InvalidParameter`] message once
    /// the 32-bit segment counter is exhausted, so that callers can name
    /// what they are sealing (a record, a blob).
    pub fn new(
        key: &[u8; KEY_LEN],
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
        aad: &[u8],
        segment_len: usize,
        too_many_segments: &'static str,
    ) -> Self {
        Self {
            shared: Segments::new(key, nonce_prefix, aad, segment_len),
            too_many_segments,
        }
    }

    /// Index of the next segment to seal.
    pub fn position(&self) -> u32 {
        self.shared.position
    }

    /// Seals one non-last segment; `plaintext` must be exactly
    /// `segment_len` bytes. Returns `segment_len + 16` bytes.
    pub fn seal_segment(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = with_tag_room(plaintext);
        self.seal_segment_in_place(&mut buf)?;
        Ok(buf)
    }

    /// In-place [`seal_segment`](Self::seal_segment): `buf` holds the
    /// plaintext and receives the ciphertext (16 bytes longer).
    pub fn seal_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.len() != self.shared.segment_len {
            return Err(Error::InvalidParameter(
                "non-last segments must be exactly segment_size bytes",
            ));
        }
        // The last segment may still use `u32::MAX`; a non-last one there
        // would leave no position for the last.
        if self.shared.position == u32::MAX {
            return Err(Error::InvalidParameter(self.too_many_segments));
        }
        self.shared
            .stream
            .encrypt_in_place(self.shared.position, false, &self.shared.aad, buf)
            .map_err(|_| Error::InvalidParameter("segment encryption failed"))?;
        self.shared.position += 1;
        Ok(())
    }

    /// Seals the last segment (`0..=segment_len` bytes) and ends the stream.
    pub fn seal_last(self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = with_tag_room(plaintext);
        self.seal_last_in_place(&mut buf)?;
        Ok(buf)
    }

    /// In-place [`seal_last`](Self::seal_last).
    pub fn seal_last_in_place(self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.len() > self.shared.segment_len {
            return Err(Error::InvalidParameter(
                "the last segment must be at most segment_size bytes",
            ));
        }
        self.shared
            .stream
            .encrypt_in_place(self.shared.position, true, &self.shared.aad, buf)
            .map_err(|_| Error::InvalidParameter("segment encryption failed"))
    }
}

impl fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSealer")
            .field("segment_len", &self.shared.segment_len)
            .field("position", &self.shared.position)
            .finish_non_exhaustive()
    }
}

fn with_tag_room(plaintext: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    buf
}

/// The read-ahead of a segment opener. A segment is only known not to be
/// the last one once a byte of the next arrived, so an opener holds at most
/// one whole `unit` (a segment as framed on the wire) plus one byte. Shared
/// by [`StreamOpener`] and the record opener, whose units also carry the
/// owner's signature.
pub(crate) struct Lookahead {
    buf: Vec<u8>,
    spare: Vec<u8>,
    unit: usize,
}

impl Lookahead {
    pub(crate) fn new(unit: usize) -> Self {
        Self {
            buf: Vec::with_capacity(unit + 1),
            spare: Vec::new(),
            unit,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn room(&self) -> usize {
        self.unit + 1 - self.buf.len()
    }

    /// Buffers the start of `data` (up to one unit plus one byte); returns
    /// the rest.
    pub(crate) fn fill<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let (now, rest) = data.split_at(self.room().min(data.len()));
        self.buf.extend_from_slice(now);
        rest
    }

    /// Reads from `reader` until one unit plus one byte are buffered
    /// (returns `false`) or the reader ends (returns `true`).
    pub(crate) fn fill_from(&mut self, reader: &mut impl Read) -> io::Result<bool> {
        let want = self.room();
        let want_u64 = u64::try_from(want).expect("segment fits in u64");
        let n = reader.take(want_u64).read_to_end(&mut self.buf)?;
        Ok(n < want)
    }

    /// The first buffered unit, if a byte of the next is buffered too (so
    /// it is not the last one).
    pub(crate) fn next_unit(&mut self) -> Option<Vec<u8>> {
        if self.buf.len() <= self.unit {
            return None;
        }
        let mut next = core::mem::take(&mut self.spare);
        next.clear();
        next.reserve(self.unit + 1);
        next.extend_from_slice(&self.buf[self.unit..]);
        self.buf.truncate(self.unit);
        Some(core::mem::replace(&mut self.buf, next))
    }

    /// Everything buffered: the last unit, once the input ended.
    pub(crate) fn take_rest(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.buf)
    }

    /// Makes `bytes` the buffered rest (an in-place last segment).
    pub(crate) fn set_rest(&mut self, bytes: Vec<u8>) {
        self.buf = bytes;
    }

    /// Hands a drained buffer back, so that the next unit reuses it.
    pub(crate) fn recycle(&mut self, spare: Vec<u8>) {
        self.spare = spare;
    }
}

/// Push-style STREAM decryption: [`push`](Self::push) ciphertext in chunks
/// of any size and receive each plaintext segment as soon as it
/// authenticates; [`finish`](Self::finish) authenticates the last segment
/// and fails with [`Error::Truncated`] if the stream was cut short. Buffers
/// at most one ciphertext segment plus one byte.
///
/// After any error the opener is poisoned and every later call fails.
pub struct StreamOpener {
    shared: Segments,
    ahead: Lookahead,
    poisoned: bool,
}

impl StreamOpener {
    /// An opener for segments sealed by
    /// [`StreamSealer::new`] with the same arguments.
    pub fn new(
        key: &[u8; KEY_LEN],
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
        aad: &[u8],
        segment_len: usize,
    ) -> Self {
        Self {
            shared: Segments::new(key, nonce_prefix, aad, segment_len),
            ahead: Lookahead::new(segment_len + TAG_LEN),
            poisoned: false,
        }
    }

    /// Index of the next segment to open.
    pub fn position(&self) -> u32 {
        self.shared.position
    }

    /// Number of pushed ciphertext bytes not yet opened.
    pub fn buffered(&self) -> usize {
        self.ahead.len()
    }

    fn segment_ct_len(&self) -> usize {
        self.shared.segment_len + TAG_LEN
    }

    /// Buffers `data` and returns every plaintext segment it completes.
    /// A segment is only known not to be the last one once a byte of the
    /// next arrives, so up to one segment stays buffered until then.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.check_poison()?;
        let mut out = Vec::new();
        while !data.is_empty() {
            data = self.ahead.fill(data);
            if let Some(mut segment) = self.ahead.next_unit() {
                self.open_in_place(&mut segment)?;
                out.push(segment);
            }
        }
        Ok(out)
    }

    fn check_poison(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::DecryptionFailed)
        } else {
            Ok(())
        }
    }

    /// Opens `buf` as the non-last segment at the current position.
    fn open_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if self.shared.position == u32::MAX
            || self
                .shared
                .stream
                .decrypt_in_place(self.shared.position, false, &self.shared.aad, buf)
                .is_err()
        {
            self.poisoned = true;
            return Err(Error::DecryptionFailed);
        }
        self.shared.position += 1;
        Ok(())
    }

    fn check_nothing_pushed(&self) -> Result<()> {
        self.check_poison()?;
        if !self.ahead.is_empty() {
            return Err(Error::InvalidParameter(
                "in-place opening takes exactly one full segment and no pushed bytes",
            ));
        }
        Ok(())
    }

    /// Opens one whole non-last ciphertext segment (`segment_len + 16`
    /// bytes) in place, for transports that frame segments themselves.
    /// Do not mix with [`push`](Self::push).
    pub fn open_segment_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.check_nothing_pushed()?;
        if buf.len() != self.segment_ct_len() {
            return Err(Error::InvalidParameter(
                "in-place opening takes exactly one full segment and no pushed bytes",
            ));
        }
        self.open_in_place(buf)
    }

    /// Opens the last ciphertext segment in place and ends the stream.
    pub fn open_last_in_place(mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.check_nothing_pushed()?;
        self.ahead.set_rest(core::mem::take(buf));
        *buf = self.finish()?;
        Ok(())
    }

    /// Authenticates and returns the last segment. Fails with
    /// [`Error::Truncated`] if the stream ended before its last segment and
    /// [`Error::DecryptionFailed`] if it was tampered with.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.check_poison()?;
        let mut last = self.ahead.take_rest();
        if last.len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        let probe = (last.len() == self.segment_ct_len()).then(|| last.clone());
        if self
            .shared
            .stream
            .decrypt_in_place(self.shared.position, true, &self.shared.aad, &mut last)
            .is_ok()
        {
            return Ok(last);
        }
        // A full segment that authenticates as a *non-last* segment means
        // the stream was cut at a segment boundary.
        if let Some(mut probe) = probe
            && self
                .shared
                .stream
                .decrypt_in_place(self.shared.position, false, &self.shared.aad, &mut probe)
                .is_ok()
        {
            probe.zeroize();
            return Err(Error::Truncated);
        }
        Err(Error::DecryptionFailed)
    }
}

impl fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamOpener")
            .field("segment_len", &self.shared.segment_len)
            .field("position", &self.shared.position)
            .field("buffered", &self.ahead.len())
            .finish_non_exhaustive()
    }
}

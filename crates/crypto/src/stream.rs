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

/// One STREAM's key, nonce prefix and associated data: seals or opens the
/// segment at any index. Segment `i`'s nonce is the prefix, `i` and the
/// last flag, so no segment depends on another and a stream can be sealed
/// or opened on several threads at once, with exactly the bytes
/// [`StreamSealer`] and [`StreamOpener`] produce (which are built on it).
///
/// It is `Sync`: threads share one by reference (or in an `Arc`), so the
/// key schedule exists once and is cleared when it drops, as the
/// sequential types' is.
///
/// **Each index must be sealed with one plaintext only**: two plaintexts
/// under one nonce reveal their XOR and GCM's authentication key. Hand out
/// indices from one counter, as [`StreamSealer`] does; the sequential types
/// exist so that callers without that need cannot get it wrong.
pub struct SegmentCipher {
    stream: Stream,
    aad: Vec<u8>,
    segment_len: usize,
    too_many_segments: &'static str,
}

impl SegmentCipher {
    /// A cipher of `segment_len`-byte segments under `key` and
    /// `nonce_prefix`, binding `aad` to every segment;
    /// `too_many_segments` is the [`Error::InvalidParameter`] message for a
    /// non-last segment at index `u32::MAX` (see [`StreamSealer::new`]).
    pub fn new(
        key: &[u8; KEY_LEN],
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
        aad: &[u8],
        segment_len: usize,
        too_many_segments: &'static str,
    ) -> Self {
        let aead = Aes256Gcm::new(&(*key).into());
        Self {
            stream: <Stream as aead_stream::NewStream<Aes256Gcm>>::from_aead(
                aead,
                &(*nonce_prefix).into(),
            ),
            aad: aad.to_vec(),
            segment_len,
            too_many_segments,
        }
    }

    /// Plaintext length of every segment but the last.
    pub fn segment_len(&self) -> usize {
        self.segment_len
    }

    /// Seals segment `index` in place: `buf` holds its plaintext (exactly
    /// `segment_len` bytes unless `last`, then `0..=segment_len`) and
    /// receives the ciphertext, [`TAG_LEN`] bytes longer.
    pub fn seal_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<()> {
        if last {
            if buf.len() > self.segment_len {
                return Err(Error::InvalidParameter(
                    "the last segment must be at most segment_size bytes",
                ));
            }
        } else {
            if buf.len() != self.segment_len {
                return Err(Error::InvalidParameter(
                    "non-last segments must be exactly segment_size bytes",
                ));
            }
            // The last segment may still use `u32::MAX`; a non-last one there
            // would leave no position for the last.
            if index == u32::MAX {
                return Err(Error::InvalidParameter(self.too_many_segments));
            }
        }
        self.stream
            .encrypt_in_place(index, last, &self.aad, buf)
            .map_err(|_| Error::InvalidParameter("segment encryption failed"))
    }

    /// Opens segment `index` in place: `buf` holds its ciphertext and
    /// receives the plaintext only if it authenticates (otherwise it keeps
    /// the ciphertext). A non-last segment must be exactly `segment_len +
    /// 16` bytes ([`Error::DecryptionFailed`] otherwise). The last one fails
    /// with [`Error::Truncated`] if it is shorter than a tag or is a whole
    /// segment that authenticates as a *non-last* one (the stream was cut at
    /// a segment boundary), and with [`Error::DecryptionFailed`] if it does
    /// not authenticate at all.
    pub fn open_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<()> {
        let full = self.segment_len + TAG_LEN;
        if !last {
            if index == u32::MAX
                || buf.len() != full
                || self
                    .stream
                    .decrypt_in_place(index, false, &self.aad, buf)
                    .is_err()
            {
                return Err(Error::DecryptionFailed);
            }
            return Ok(());
        }
        if buf.len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        let probe = (buf.len() == full).then(|| buf.clone());
        if self
            .stream
            .decrypt_in_place(index, true, &self.aad, buf)
            .is_ok()
        {
            return Ok(());
        }
        if let Some(mut probe) = probe
            && self
                .stream
                .decrypt_in_place(index, false, &self.aad, &mut probe)
                .is_ok()
        {
            probe.zeroize();
            return Err(Error::Truncated);
        }
        Err(Error::DecryptionFailed)
    }
}

impl fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentCipher")
            .field("segment_len", &self.segment_len)
            .finish_non_exhaustive()
    }
}

/// A [`SegmentCipher`] and the position of the next segment.
struct Segments {
    cipher: SegmentCipher,
    position: u32,
}

impl Segments {
    fn new(cipher: SegmentCipher) -> Self {
        Self {
            cipher,
            position: 0,
        }
    }
}

/// Push-style STREAM encryption: feed full segments with
/// [`seal_segment`](Self::seal_segment), then the tail with
/// [`seal_last`](Self::seal_last), which consumes the sealer.
pub struct StreamSealer {
    shared: Segments,
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
        Self::from_cipher(SegmentCipher::new(
            key,
            nonce_prefix,
            aad,
            segment_len,
            too_many_segments,
        ))
    }

    /// A sealer from segment 0 of `cipher`'s stream.
    pub fn from_cipher(cipher: SegmentCipher) -> Self {
        Self {
            shared: Segments::new(cipher),
        }
    }

    /// Index of the next segment to seal.
    pub fn position(&self) -> u32 {
        self.shared.position
    }

    /// The cipher, sealing each segment at an index the caller gives, from
    /// any thread. Only before the first segment was sealed here, so that
    /// no index is sealed twice by the two.
    pub fn into_parallel(self) -> Result<SegmentCipher> {
        if self.shared.position != 0 {
            return Err(Error::InvalidParameter(
                "a stream sealer goes parallel before its first segment only",
            ));
        }
        Ok(self.shared.cipher)
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
        self.shared
            .cipher
            .seal_at(self.shared.position, false, buf)?;
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
        self.shared.cipher.seal_at(self.shared.position, true, buf)
    }
}

impl fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSealer")
            .field("segment_len", &self.shared.cipher.segment_len)
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
            shared: Segments::new(SegmentCipher::new(
                key,
                nonce_prefix,
                aad,
                segment_len,
                "stream has too many segments",
            )),
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

    /// The cipher, opening each segment at an index the caller gives, from
    /// any thread. Only before anything was pushed or opened here.
    pub fn into_parallel(self) -> Result<SegmentCipher> {
        self.check_poison()?;
        if self.shared.position != 0 || !self.ahead.is_empty() {
            return Err(Error::InvalidParameter(
                "a stream opener goes parallel before its first segment only",
            ));
        }
        Ok(self.shared.cipher)
    }

    fn segment_ct_len(&self) -> usize {
        self.shared.cipher.segment_len + TAG_LEN
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
        if let Err(e) = self.shared.cipher.open_at(self.shared.position, false, buf) {
            self.poisoned = true;
            return Err(e);
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
        self.shared
            .cipher
            .open_at(self.shared.position, true, &mut last)?;
        Ok(last)
    }
}

impl fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamOpener")
            .field("segment_len", &self.shared.cipher.segment_len)
            .field("position", &self.shared.position)
            .field("buffered", &self.ahead.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 64;
    const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
    const PREFIX: [u8; NONCE_PREFIX_LEN] = [1, 2, 3, 4, 5, 6, 7];

    fn cipher() -> SegmentCipher {
        SegmentCipher::new(&KEY, &PREFIX, b"aad", SEG, "too many")
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// The sequential sealer's segments of `data`.
    fn sealed_sequentially(data: &[u8]) -> Vec<Vec<u8>> {
        let mut sealer = StreamSealer::new(&KEY, &PREFIX, b"aad", SEG, "too many");
        let mut out = Vec::new();
        let mut rest = data;
        while rest.len() > SEG {
            out.push(sealer.seal_segment(&rest[..SEG]).unwrap());
            rest = &rest[SEG..];
        }
        out.push(sealer.seal_last(rest).unwrap());
        out
    }

    /// Every length around the segment boundaries, the empty last segment
    /// (lengths 0 and k * SEG) among them: index-addressed segments, sealed
    /// in reverse order to show that no state carries between them, are
    /// byte for byte the sequential ones, and open both ways.
    #[test]
    fn seal_at_matches_the_sequential_sealer() {
        let c = cipher();
        for len in (0..=4 * SEG + 1).filter(|l| l % SEG <= 2 || l % SEG >= SEG - 2 || l % 17 == 0) {
            let data = plaintext(len);
            let expected = sealed_sequentially(&data);
            let count = expected.len();
            let chunks: Vec<&[u8]> = if len == 0 {
                vec![&[][..]]
            } else {
                data.chunks(SEG).collect()
            };
            // A length that is a whole number of segments ends in a full
            // last segment, as the sequential sealer leaves it.
            assert_eq!(chunks.len(), count, "len {len}");
            for i in (0..count).rev() {
                let mut buf = chunks[i].to_vec();
                c.seal_at(i as u32, i + 1 == count, &mut buf).unwrap();
                assert_eq!(buf, expected[i], "len {len}, segment {i}");
            }
            let mut opener = StreamOpener::new(&KEY, &PREFIX, b"aad", SEG);
            let mut opened: Vec<u8> = opener.push(&expected.concat()).unwrap().concat();
            opened.extend(opener.finish().unwrap());
            assert_eq!(opened, data);
            for (i, seg) in expected.iter().enumerate() {
                let mut buf = seg.clone();
                c.open_at(i as u32, i + 1 == count, &mut buf).unwrap();
                assert_eq!(buf, chunks[i]);
            }
        }
    }

    #[test]
    fn open_at_refuses_other_positions_flags_and_bit_flips() {
        let c = cipher();
        let data = plaintext(2 * SEG + 5);
        let segs = sealed_sequentially(&data);
        let try_open = |i: u32, last: bool, seg: &[u8]| c.open_at(i, last, &mut seg.to_vec());
        assert!(matches!(
            try_open(1, false, &segs[0]),
            Err(Error::DecryptionFailed)
        ));
        assert!(matches!(
            try_open(0, true, &segs[2]),
            Err(Error::DecryptionFailed)
        ));
        assert!(matches!(
            try_open(2, false, &segs[2]),
            Err(Error::DecryptionFailed)
        ));
        let mut flipped = segs[1].clone();
        flipped[3] ^= 1;
        assert!(matches!(
            try_open(1, false, &flipped),
            Err(Error::DecryptionFailed)
        ));
        // A whole non-last segment offered as the last: the stream was cut
        // at a segment boundary.
        assert!(matches!(try_open(1, true, &segs[1]), Err(Error::Truncated)));
        assert!(matches!(
            try_open(2, true, &segs[2][..TAG_LEN - 1]),
            Err(Error::Truncated)
        ));
        // A failed open leaves the ciphertext, never a partial plaintext.
        let mut buf = flipped.clone();
        assert!(c.open_at(1, false, &mut buf).is_err());
        assert_eq!(buf, flipped);
    }

    #[test]
    fn seal_at_checks_lengths_and_the_last_index() {
        let c = cipher();
        assert!(c.seal_at(0, false, &mut plaintext(SEG - 1)).is_err());
        assert!(c.seal_at(0, true, &mut plaintext(SEG + 1)).is_err());
        assert!(matches!(
            c.seal_at(u32::MAX, false, &mut plaintext(SEG)),
            Err(Error::InvalidParameter("too many"))
        ));
        let mut last = plaintext(SEG);
        c.seal_at(u32::MAX, true, &mut last).unwrap();
        c.open_at(u32::MAX, true, &mut last).unwrap();
        assert_eq!(last, plaintext(SEG));
    }
}

//! Sealing and opening a record's (or a deduplicated blob's) segments on
//! every core. Segment `i` of a STREAM depends only on the key, the nonce
//! prefix, `i` and the last flag, so the segments are sealed (or opened and
//! verified) by several threads at once and put back in order: the bytes on
//! the wire and the plaintext written out are those of the sequential
//! sealer and opener.
//!
//! Memory stays bounded whatever the record size: at most [`window`]
//! segments are being read, sealed or opened, or waiting for their turn.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use sesphr::proto::{self, get_record_response};
use sesphr_crypto::stream::SegmentCipher;
use sesphr_crypto::{self as crypto, RecordSegmentOpener, RecordSegmentSealer};
use tokio::task::JoinHandle;
use tonic::Streaming;

use crate::ClientError;
use crate::upload::read_err;

/// Threads sealing or opening at once: one per core.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Segments in memory at once: enough for every worker to have one while
/// as many finished ones wait for the network or for an earlier segment.
pub(crate) fn window() -> usize {
    2 * workers()
}

/// Most ciphertext bytes an opener holds in flight: the segment size of a
/// blob is the server's to choose (4 KiB to 16 MiB, unauthenticated until
/// the blob's hash is checked at the end), so the window shrinks for large
/// segments rather than hold `window()` of them. 1 MiB segments keep the
/// whole window on up to 15 cores.
const OPEN_BUDGET: usize = 32 << 20;

/// The opener's window for units of `unit` bytes: [`window`], at most
/// [`OPEN_BUDGET`] bytes of them, at least one.
fn open_window(unit: usize) -> usize {
    window().min(OPEN_BUDGET / unit.max(1)).max(1)
}

/// What is worth a thread: a record of one segment is sealed where it is,
/// since there is nothing to overlap it with.
pub(crate) fn worth_it(len: u64, seg: u64) -> bool {
    workers() > 1 && len > seg
}

/// Seals segment `i` at any index, from any thread: a record's segments
/// (signed) or a deduplicated blob's.
pub(crate) trait SealAt: Sync {
    /// Bytes sealing adds to a segment.
    const OVERHEAD: usize;
    /// What is sealed, for errors: "record" or "blob".
    const WHAT: &'static str;
    fn seal_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> crypto::Result<()>;
}

impl SealAt for RecordSegmentSealer {
    const OVERHEAD: usize = crypto::record::SEGMENT_OVERHEAD;
    const WHAT: &'static str = "record";
    fn seal_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> crypto::Result<()> {
        RecordSegmentSealer::seal_at(self, index, last, buf)
    }
}

impl SealAt for SegmentCipher {
    const OVERHEAD: usize = crypto::stream::TAG_LEN;
    const WHAT: &'static str = "blob";
    fn seal_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> crypto::Result<()> {
        SegmentCipher::seal_at(self, index, last, buf)
    }
}

/// Opens segment `i` at any index, from any thread.
pub(crate) trait OpenAt: Send + Sync + 'static {
    /// Length of a sealed non-last segment.
    fn unit(&self) -> usize;
    fn open_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> crypto::Result<()>;
}

impl OpenAt for RecordSegmentOpener {
    fn unit(&self) -> usize {
        RecordSegmentOpener::unit(self)
    }
    fn open_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> crypto::Result<()> {
        RecordSegmentOpener::open_at(self, index, last, buf)
    }
}

impl OpenAt for SegmentCipher {
    fn unit(&self) -> usize {
        self.segment_len() + crypto::stream::TAG_LEN
    }
    fn open_at(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> crypto::Result<()> {
        SegmentCipher::open_at(self, index, last, buf)
    }
}

fn too_many_segments<S: SealAt>() -> ClientError {
    ClientError::Invalid(format!("{} has too many segments", S::WHAT))
}

/// [`crate::upload::seal_segments`] on [`workers`] threads: reads exactly
/// `len` bytes from `input` in segments of `seg` bytes, seals them
/// concurrently and hands them to `emit` strictly in order (false: stop
/// early). Input is read and `emit` called on the calling thread. Returns
/// whether every segment was emitted.
pub(crate) fn seal_segments<S: SealAt>(
    input: &mut impl Read,
    len: u64,
    seg: u64,
    sealer: &S,
    mut emit: impl FnMut(Vec<u8>) -> Result<bool, ClientError>,
) -> Result<bool, ClientError> {
    let count = len.div_ceil(seg).max(1);
    // The last segment may be at index u32::MAX, no later.
    if count > u64::from(u32::MAX) + 1 {
        return Err(too_many_segments::<S>());
    }
    let window = window() as u64;
    let room = S::OVERHEAD;
    type Sealed = (u64, crypto::Result<Vec<u8>>);
    let (jobs, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(window as usize);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let (done_tx, done) = mpsc::channel::<Sealed>();
        for _ in 0..workers() {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            s.spawn(move || {
                loop {
                    // A poisoned lock means another worker panicked; the
                    // scope reports that panic.
                    let Ok(rx) = job_rx.lock() else { return };
                    let Ok((i, mut buf)) = rx.recv() else { return };
                    drop(rx);
                    let index = u32::try_from(i).expect("counted above");
                    let sealed = sealer.seal_at(index, i + 1 == count, &mut buf);
                    if done_tx.send((i, sealed.map(|()| buf))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut run = || -> Result<bool, ClientError> {
            let (mut read, mut emitted) = (0u64, 0u64);
            let mut ready: BTreeMap<u64, crypto::Result<Vec<u8>>> = BTreeMap::new();
            loop {
                while read < count && read - emitted < window {
                    let n = (len - read * seg).min(seg) as usize;
                    let mut buf = Vec::with_capacity(n + room);
                    buf.resize(n, 0);
                    input.read_exact(&mut buf).map_err(read_err)?;
                    // Never blocks: the channel holds `window` jobs and at
                    // most `window` segments are out.
                    jobs.send((read, buf))
                        .map_err(|_| ClientError::Invalid("a sealing thread failed".into()))?;
                    read += 1;
                }
                if emitted == count {
                    return Ok(true);
                }
                let sealed = loop {
                    if let Some(sealed) = ready.remove(&emitted) {
                        break sealed;
                    }
                    let (i, sealed) = done
                        .recv()
                        .map_err(|_| ClientError::Invalid("a sealing thread failed".into()))?;
                    ready.insert(i, sealed);
                };
                emitted += 1;
                if !emit(sealed?)? {
                    return Ok(false);
                }
            }
        };
        let res = run();
        // The workers finish what they hold and stop.
        drop(jobs);
        res
    })
}

/// Cuts a stream of signed ciphertext into units (one signed segment each)
/// without copying a unit twice. A unit is known not to be the last one
/// once a byte of the next arrived, so at most one unit plus one byte are
/// held here.
struct Units {
    buf: Vec<u8>,
    unit: usize,
}

impl Units {
    fn new(unit: usize) -> Self {
        Self {
            buf: Vec::with_capacity(unit + 1),
            unit,
        }
    }

    /// Buffers the start of `data`, up to one unit plus one byte; returns
    /// the rest.
    fn fill<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let room = self.unit + 1 - self.buf.len();
        let (now, rest) = data.split_at(room.min(data.len()));
        self.buf.extend_from_slice(now);
        rest
    }

    /// The buffered unit, once a byte of the next is buffered too.
    fn next_unit(&mut self) -> Option<Vec<u8>> {
        if self.buf.len() <= self.unit {
            return None;
        }
        let mut next = Vec::with_capacity(self.unit + 1);
        next.extend(self.buf.pop());
        Some(core::mem::replace(&mut self.buf, next))
    }
}

type Opening = JoinHandle<crypto::Result<Vec<u8>>>;

/// A record's segments opened and verified on the blocking pool, at most
/// [`window`] at once, and written out strictly in order: a segment is
/// written once it and every one before it verified, and the first that
/// fails stops the writing with the error the sequential opener gives.
pub(crate) struct ParallelOpener<O: OpenAt> {
    opener: Arc<O>,
    units: Units,
    in_flight: VecDeque<Opening>,
    next: u32,
    window: usize,
}

pub(crate) fn write_err(e: std::io::Error) -> ClientError {
    ClientError::Io {
        path: "output".into(),
        source: e,
    }
}

impl<O: OpenAt> ParallelOpener<O> {
    pub(crate) fn new(opener: O) -> Self {
        let opener_unit = opener.unit();
        let units = Units::new(opener_unit);
        Self {
            opener: Arc::new(opener),
            units,
            in_flight: VecDeque::new(),
            next: 0,
            window: open_window(opener_unit),
        }
    }

    fn spawn(&mut self, mut unit: Vec<u8>, last: bool) {
        let (opener, index) = (self.opener.clone(), self.next);
        // A non-last segment at u32::MAX is refused by `open_at`, and
        // nothing after it is written.
        self.next = self.next.saturating_add(1);
        self.in_flight
            .push_back(tokio::task::spawn_blocking(move || {
                opener.open_at(index, last, &mut unit).map(|()| unit)
            }));
    }

    /// Waits for the oldest segment in flight (forever if there is none)
    /// and takes its plaintext. Cancel-safe: a segment is taken out only
    /// once it is returned.
    pub(crate) async fn oldest(&mut self) -> Result<Vec<u8>, ClientError> {
        let Some(oldest) = self.in_flight.front_mut() else {
            return std::future::pending().await;
        };
        let opened = oldest.await;
        self.in_flight.pop_front();
        opened
            .map_err(|e| ClientError::Invalid(format!("decryption task failed: {e}")))?
            .map_err(crate::refused_segment)
    }

    /// Waits for the oldest segment in flight and writes it.
    async fn write_oldest(&mut self, out: &mut (dyn Write + Send)) -> Result<(), ClientError> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let plain = self.oldest().await?;
        out.write_all(&plain).map_err(write_err)
    }

    /// Buffers `data`, starts opening every segment it completes and
    /// writes every segment already verified, in order.
    pub(crate) async fn push(
        &mut self,
        mut data: &[u8],
        out: &mut (dyn Write + Send),
    ) -> Result<(), ClientError> {
        while !data.is_empty() {
            data = self.units.fill(data);
            if let Some(unit) = self.units.next_unit() {
                if self.in_flight.len() >= self.window {
                    self.write_oldest(out).await?;
                }
                self.spawn(unit, false);
            }
        }
        // Whatever already verified goes out now rather than when the
        // window fills: output streams as it authenticates.
        while self.in_flight.front().is_some_and(|h| h.is_finished()) {
            self.write_oldest(out).await?;
        }
        Ok(())
    }

    /// Writes every segment in flight, in order, stopping at the first that
    /// fails. Called before reporting a transport error, so that a bad
    /// segment the sequential opener would have refused first is the error.
    pub(crate) async fn drain(&mut self, out: &mut (dyn Write + Send)) -> Result<(), ClientError> {
        while !self.in_flight.is_empty() {
            self.write_oldest(out).await?;
        }
        Ok(())
    }

    /// At the end of the stream: writes every segment in flight, then opens
    /// what is buffered as the last segment (truncation is detected there)
    /// and writes it.
    pub(crate) async fn finish(mut self, out: &mut (dyn Write + Send)) -> Result<(), ClientError> {
        self.drain(out).await?;
        let last = core::mem::take(&mut self.units.buf);
        self.spawn(last, true);
        self.write_oldest(out).await
    }
}

/// The next chunk of a record's ciphertext, `None` at the end of the
/// stream.
pub(crate) async fn next_chunk(
    stream: &mut Streaming<proto::GetRecordResponse>,
) -> Result<Option<Bytes>, ClientError> {
    match stream.message().await.map_err(crate::rpc("CloudStorage"))? {
        None => Ok(None),
        Some(msg) => chunk_of(msg).map(Some),
    }
}

fn chunk_of(msg: proto::GetRecordResponse) -> Result<Bytes, ClientError> {
    match msg.part {
        Some(get_record_response::Part::Chunk(c)) => Ok(c),
        _ => Err(ClientError::Verification(
            "CloudStorage sent metadata twice".into(),
        )),
    }
}

/// Opens the rest of a record's ciphertext with `opener`: `leading` (bytes
/// of it already taken off the stream), then every chunk that arrives,
/// each shown to `seen` once pushed (a hash, the progress). Segments are
/// written as soon as they and every one before them verified, also while
/// the next message is awaited; at the end what is left is opened as the
/// last segment. A segment already received that fails is reported before
/// whatever the transport did next, as when opening one by one.
pub(crate) async fn open_stream<O: OpenAt>(
    mut opener: ParallelOpener<O>,
    leading: &[u8],
    stream: &mut Streaming<proto::GetRecordResponse>,
    out: &mut (dyn Write + Send),
    mut seen: impl FnMut(&[u8]),
) -> Result<(), ClientError> {
    opener.push(leading, out).await?;
    loop {
        let next = loop {
            tokio::select! {
                next = stream.message() => break next,
                plain = opener.oldest() => out.write_all(&plain?).map_err(write_err)?,
            }
        };
        let chunk = next
            .map_err(crate::rpc("CloudStorage"))
            .and_then(|msg| msg.map(chunk_of).transpose());
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                opener.drain(out).await?;
                return Err(e);
            }
        };
        opener.push(&chunk, out).await?;
        seen(&chunk);
    }
    opener.finish(out).await?;
    out.flush().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload;
    use sesphr_crypto::record::{MIN_SEGMENT_SIZE, SEGMENT_OVERHEAD};
    use sesphr_crypto::{
        HeaderDraft, KemKey, RecordHeader, RecordOpener, RecordSealer, SecretKey, SigningKey,
        encapsulate,
    };

    const SEG: usize = MIN_SEGMENT_SIZE as usize;
    const UNIT: usize = SEG + SEGMENT_OVERHEAD;

    struct Fixture {
        header: RecordHeader,
        key: KemKey,
        signer: SigningKey,
    }

    fn fixture() -> Fixture {
        let mut rng = rand::rng();
        let owner = SecretKey::generate(&mut rng);
        let signer = SigningKey::generate(&mut rng);
        let (capsule, key) = encapsulate(&mut rng, &owner.public_key());
        let header = HeaderDraft::new(&mut rng, b"rec", b"alice", "medical", 0, capsule)
            .unwrap()
            .with_segment_size(MIN_SEGMENT_SIZE)
            .unwrap()
            .sign(&signer, b"");
        Fixture {
            header,
            key,
            signer,
        }
    }

    impl Fixture {
        fn sealer(&self) -> RecordSealer {
            RecordSealer::new(self.header.clone(), &self.key, &self.signer).unwrap()
        }

        fn opener(&self) -> RecordOpener {
            RecordOpener::new(self.header.clone(), &self.key, &self.signer.verifying_key()).unwrap()
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Counts the bytes read, to see how far sealing runs ahead.
    struct Counting<'a> {
        inner: &'a [u8],
        read: &'a std::cell::Cell<usize>,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(out)?;
            self.read.set(self.read.get() + n);
            Ok(n)
        }
    }

    #[test]
    fn sealing_emits_the_sequential_chunks_in_order_within_the_window() {
        let f = fixture();
        for len in [0, 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 1, 40 * SEG + 7] {
            let plain = data(len);
            let mut sequential = Vec::new();
            upload::seal_segments(&mut &plain[..], len as u64, SEG as u64, f.sealer(), |c| {
                sequential.push(c);
                Ok(true)
            })
            .unwrap();

            let read = std::cell::Cell::new(0);
            let mut input = Counting {
                inner: &plain,
                read: &read,
            };
            let mut parallel = Vec::new();
            let sealer = f.sealer().into_parallel().unwrap();
            let all = seal_segments(&mut input, len as u64, SEG as u64, &sealer, |c| {
                // Never more than `window` segments read and not yet out.
                assert!(read.get() <= (parallel.len() + window()) * SEG, "len {len}");
                parallel.push(c);
                Ok(true)
            })
            .unwrap();
            assert!(all);
            assert_eq!(parallel, sequential, "len {len}");
        }
    }

    #[test]
    fn sealing_stops_when_the_call_ends_and_on_a_short_input() {
        let f = fixture();
        let plain = data(30 * SEG);
        let sealer = f.sealer().into_parallel().unwrap();
        let mut n = 0;
        let all = seal_segments(
            &mut &plain[..],
            plain.len() as u64,
            SEG as u64,
            &sealer,
            |_| {
                n += 1;
                Ok(n < 5)
            },
        )
        .unwrap();
        assert!(!all);
        assert_eq!(n, 5);
        let short = seal_segments(
            &mut &plain[..],
            31 * SEG as u64,
            SEG as u64,
            &sealer,
            |_| Ok(true),
        );
        assert!(matches!(short, Err(ClientError::Io { .. })));
    }

    /// What the opener writes and the error it ends with, fed in
    /// `chunk`-byte pieces.
    async fn open(f: &Fixture, body: &[u8], chunk: usize) -> (Vec<u8>, Result<(), ClientError>) {
        let mut opener = ParallelOpener::new(f.opener().into_parallel().unwrap());
        let mut out = Vec::new();
        for piece in body.chunks(chunk) {
            if let Err(e) = opener.push(piece, &mut out).await {
                return (out, Err(e));
            }
        }
        let res = opener.finish(&mut out).await;
        (out, res)
    }

    /// The sequential opener's output and error over the same bytes.
    fn open_sequentially(f: &Fixture, body: &[u8]) -> (Vec<u8>, Result<(), ClientError>) {
        let mut opener = f.opener();
        match opener.push(body) {
            Err(e) => {
                // `push` returns nothing once a segment fails: what it had
                // opened before is what a caller wrote.
                let good = body.len().min(opener_failed_at(f, body) * UNIT) / UNIT;
                (data(good * SEG), Err(crate::refused_segment(e)))
            }
            Ok(segs) => {
                let mut out = segs.concat();
                match opener.finish() {
                    Ok(last) => {
                        out.extend(last);
                        (out, Ok(()))
                    }
                    Err(e) => (out, Err(crate::refused_segment(e))),
                }
            }
        }
    }

    /// The index of the first non-last segment the sequential opener
    /// refuses, unit by unit.
    fn opener_failed_at(f: &Fixture, body: &[u8]) -> usize {
        let mut opener = f.opener();
        let mut i = 0;
        while (i + 1) * UNIT < body.len() {
            let mut unit = body[i * UNIT..(i + 1) * UNIT].to_vec();
            if opener.open_segment_in_place(&mut unit).is_err() {
                return i;
            }
            i += 1;
        }
        i
    }

    /// Intact, a byte flipped in a middle segment, a signature replaced by
    /// another segment's, cut at a segment boundary or inside one: the
    /// parallel opener writes exactly the segments before the bad one, in
    /// order, and ends with the sequential opener's error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_segment_stops_the_output_where_the_sequential_opener_does() {
        let f = fixture();
        let plain = data(12 * SEG + 100);
        let mut body = Vec::new();
        upload::seal_segments(
            &mut &plain[..],
            plain.len() as u64,
            SEG as u64,
            f.sealer(),
            |c| {
                body.extend(c);
                Ok(true)
            },
        )
        .unwrap();
        let mut flipped = body.clone();
        flipped[7 * UNIT + 10] ^= 1;
        let mut resigned = body.clone();
        let sig = |i: usize| (i + 1) * UNIT - 64..(i + 1) * UNIT;
        let other = body[sig(2)].to_vec();
        resigned[sig(5)].copy_from_slice(&other);
        let cases = [
            ("intact", body.clone()),
            ("flipped", flipped),
            ("resigned", resigned),
            ("cut at a boundary", body[..9 * UNIT].to_vec()),
            ("cut inside", body[..9 * UNIT + 3].to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, bytes) in cases {
            let (want_out, want) = open_sequentially(&f, &bytes);
            for chunk in [1000, UNIT, 3 * UNIT + 1, 1 << 20] {
                let (out, res) = open(&f, &bytes, chunk).await;
                assert_eq!(out.len(), want_out.len(), "{what}, {chunk}");
                assert!(out == want_out, "{what}, {chunk}");
                assert_eq!(format!("{res:?}"), format!("{want:?}"), "{what}, {chunk}");
            }
        }
        assert_eq!(open(&f, &body, 5000).await.0, plain);
    }
    #[test]
    fn units_are_cut_only_when_a_byte_of_the_next_arrived() {
        let mut u = Units::new(4);
        let mut data: &[u8] = b"abcd";
        data = u.fill(data);
        assert!(data.is_empty());
        assert_eq!(u.next_unit(), None);
        let rest = u.fill(b"efghij");
        assert_eq!(rest, b"fghij");
        assert_eq!(u.next_unit().as_deref(), Some(&b"abcd"[..]));
        let rest = u.fill(rest);
        assert_eq!(rest, b"j");
        assert_eq!(u.next_unit().as_deref(), Some(&b"efgh"[..]));
        assert_eq!(u.fill(rest), b"");
        assert_eq!(u.buf, b"ij");
    }

    /// A blob's segments opened on every core: the blob's bytes back
    /// whole; a flipped byte stops the output after the segments before
    /// it, with the sequential opener's error kind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_opens_on_every_core_and_stops_at_a_bad_segment() {
        use sesphr_dedup::convergent::{self, BLOB_HEADER_LEN, BlobOpener, MIN_BLOB_SEGMENT_SIZE};
        let seg = MIN_BLOB_SEGMENT_SIZE as usize;
        let key = convergent::content_key(&[5; 32]);
        let plain = data(9 * seg + 33);
        let blob = convergent::seal_blob_with_segment_size(&key, &plain, seg as u32).unwrap();
        let open = async |blob: &[u8]| {
            let mut head = BlobOpener::new(&key);
            head.push(&blob[..BLOB_HEADER_LEN]).unwrap();
            let (_, cipher) = head.into_parallel().unwrap();
            let mut opener = ParallelOpener::new(cipher);
            let mut out = Vec::new();
            for piece in blob[BLOB_HEADER_LEN..].chunks(1000) {
                if let Err(e) = opener.push(piece, &mut out).await {
                    return (out, Err(e));
                }
            }
            let res = opener.finish(&mut out).await;
            (out, res)
        };
        let (out, res) = open(&blob).await;
        res.unwrap();
        assert_eq!(out, plain);
        let mut flipped = blob.clone();
        flipped[BLOB_HEADER_LEN + 4 * (seg + 16) + 7] ^= 1;
        let (out, res) = open(&flipped).await;
        assert!(
            matches!(
                res,
                Err(ClientError::Crypto(crypto::Error::DecryptionFailed))
            ),
            "{res:?}"
        );
        assert_eq!(out, plain[..4 * seg]);
    }

    /// However large the segments the server declares, the opener's
    /// window stays within its byte budget, and 1 MiB segments keep it.
    #[test]
    fn the_open_window_is_bounded_in_bytes() {
        let largest = 16 << 20;
        assert!(open_window(largest + 16) * (largest + 16) <= OPEN_BUDGET.max(largest + 16));
        assert_eq!(open_window(usize::MAX), 1);
        if workers() <= 15 {
            assert_eq!(open_window((1 << 20) + SEGMENT_OVERHEAD), window());
        }
    }
}

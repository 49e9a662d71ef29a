//! Sealing and opening a 256 MiB record (1 MiB segments, owner-signed)
//! one segment after another against all cores at once through the
//! index-addressed `RecordSegmentSealer` / `RecordSegmentOpener`, with the
//! segments already in their own buffers (as read from a file or the
//! network). The client's upload and download paths do the parallel form
//! with a bounded window of segments; this measures the cryptography alone.
//!
//! Not criterion: on a machine shared with other work a mean says more
//! about the neighbours than about the code, so the two forms run
//! alternately, `ROUNDS` times each, and the minimum and median of each are
//! printed. `cargo bench -p sesphr-crypto --bench parallel_stream`.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sesphr_crypto::record::SEGMENT_OVERHEAD;
use sesphr_crypto::{
    KemKey, RecordHeader, RecordOpener, RecordSealer, SecretKey, SigningKey, VerifyingKey,
    encapsulate,
};

const SIZE: usize = 256 << 20;
const ROUNDS: usize = 7;

/// Runs `f(i)` for every `i < count` on `threads` threads, each taking the
/// next index when it is free.
fn on_threads(threads: usize, count: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    f(i);
                }
            });
        }
    });
}

/// One buffer per segment; a thread locks only the segment it works on.
type Segments = Vec<Mutex<Vec<u8>>>;

struct Fixture {
    data: Vec<u8>,
    kem_key: KemKey,
    header: RecordHeader,
    signer: SigningKey,
    owner: VerifyingKey,
    seg: usize,
}

impl Fixture {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut data = vec![0u8; SIZE];
        rng.fill_bytes(&mut data);
        let owner = SecretKey::generate(&mut rng);
        let (capsule, kem_key) = encapsulate(&mut rng, &owner.public_key());
        let signer = SigningKey::generate(&mut rng);
        let header =
            RecordHeader::new(&mut rng, b"bench", b"owner", "medical", 0, capsule, &signer)
                .unwrap();
        let seg = header.segment_size() as usize;
        Self {
            data,
            kem_key,
            owner: signer.verifying_key(),
            header,
            signer,
            seg,
        }
    }

    fn plaintext(&self) -> Segments {
        self.data
            .chunks(self.seg)
            .map(|c| {
                let mut v = Vec::with_capacity(self.seg + SEGMENT_OVERHEAD);
                v.extend_from_slice(c);
                Mutex::new(v)
            })
            .collect()
    }

    fn sealer(&self) -> RecordSealer {
        RecordSealer::new(self.header.clone(), &self.kem_key, &self.signer).unwrap()
    }

    fn opener(&self) -> RecordOpener {
        RecordOpener::new(self.header.clone(), &self.kem_key, &self.owner).unwrap()
    }

    fn seal_sequential(&self, segs: &Segments) {
        let mut sealer = self.sealer();
        let (last, body) = segs.split_last().unwrap();
        for s in body {
            sealer
                .seal_segment_in_place(&mut s.lock().unwrap())
                .unwrap();
        }
        sealer
            .seal_last_in_place(&mut last.lock().unwrap())
            .unwrap();
    }

    fn seal_parallel(&self, threads: usize, segs: &Segments) {
        let sealer = self.sealer().into_parallel().unwrap();
        let count = segs.len();
        on_threads(threads, count, |i| {
            let last = i + 1 == count;
            sealer
                .seal_at(i as u32, last, &mut segs[i].lock().unwrap())
                .unwrap()
        });
    }

    fn open_sequential(&self, segs: &Segments) {
        let mut opener = self.opener();
        let (last, body) = segs.split_last().unwrap();
        for s in body {
            opener
                .open_segment_in_place(&mut s.lock().unwrap())
                .unwrap();
        }
        opener
            .open_last_in_place(&mut last.lock().unwrap())
            .unwrap();
    }

    fn open_parallel(&self, threads: usize, segs: &Segments) {
        let opener = self.opener().into_parallel().unwrap();
        let count = segs.len();
        on_threads(threads, count, |i| {
            let last = i + 1 == count;
            opener
                .open_at(i as u32, last, &mut segs[i].lock().unwrap())
                .unwrap()
        });
    }
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn report(what: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let (min, median) = (times[0], times[times.len() / 2]);
    let mib = (SIZE >> 20) as f64;
    println!(
        "{what:<24} min {:>7.1} ms ({:>6.0} MiB/s)   median {:>7.1} ms ({:>6.0} MiB/s)",
        min.as_secs_f64() * 1e3,
        mib / min.as_secs_f64(),
        median.as_secs_f64() * 1e3,
        mib / median.as_secs_f64(),
    );
    min
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` is not ours.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let fx = Fixture::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut t: [Vec<Duration>; 4] = Default::default();
    for _ in 0..ROUNDS {
        // Fresh plaintext each time: sealing in place consumes it. The
        // sealed copies are then opened, checking the two forms agree.
        let (a, b) = (fx.plaintext(), fx.plaintext());
        t[0].push(time(|| fx.seal_sequential(black_box(&a))));
        t[1].push(time(|| fx.seal_parallel(threads, black_box(&b))));
        for (x, y) in a.iter().zip(&b) {
            assert!(*x.lock().unwrap() == *y.lock().unwrap());
        }
        t[2].push(time(|| fx.open_sequential(black_box(&a))));
        t[3].push(time(|| fx.open_parallel(threads, black_box(&b))));
        let opened: Vec<u8> = b
            .into_iter()
            .flat_map(|s| s.into_inner().unwrap())
            .collect();
        assert!(opened == fx.data);
    }
    let [s, sp, o, op] = t;
    println!("256 MiB record, 1 MiB segments, {threads} threads, {ROUNDS} rounds each");
    let s = report("seal sequential", s);
    let sp = report(&format!("seal {threads} threads"), sp);
    let o = report("open sequential", o);
    let op = report(&format!("open {threads} threads"), op);
    println!(
        "speed-up (min): seal {:.2}x, open {:.2}x",
        s.as_secs_f64() / sp.as_secs_f64(),
        o.as_secs_f64() / op.as_secs_f64()
    );
}

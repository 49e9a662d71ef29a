//! Streaming record encryption: round trips, truncation, reordering,
//! splicing and bit flips.

use std::io::{Read, Write};

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sesphr_crypto::record::{DEFAULT_SEGMENT_SIZE, MIN_SEGMENT_SIZE, SEGMENT_OVERHEAD};
use sesphr_crypto::{
    DemKey, DemKeySource, Error, HeaderDraft, KemKey, RecordHeader, RecordOpener, RecordReader,
    RecordSealer, RecordWriter, SecretKey, SigningKey, VerifyingKey, decapsulate_original,
    decrypt_record, encapsulate, encrypt_record,
};

const SEG: usize = MIN_SEGMENT_SIZE as usize;

struct Fixture {
    owner: SecretKey,
    signer: SigningKey,
    header: RecordHeader,
    key: KemKey,
}

impl Fixture {
    fn vk(&self) -> VerifyingKey {
        self.signer.verifying_key()
    }
}

/// One signed non-last segment on the wire.
const UNIT: usize = SEG + SEGMENT_OVERHEAD;

fn fixture(seed: u64, segment_size: u32) -> Fixture {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let owner = SecretKey::generate(&mut rng);
    let signer = SigningKey::generate(&mut rng);
    let (capsule, key) = encapsulate(&mut rng, &owner.public_key());
    let header = HeaderDraft::new(&mut rng, b"record-1", b"patient-7", "medical", 2, capsule)
        .unwrap()
        .with_segment_size(segment_size)
        .unwrap()
        .sign(&signer, b"");
    Fixture {
        owner,
        signer,
        header,
        key,
    }
}

fn plaintext(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Encrypts with the `Write` adapter, writing in `chunk`-byte pieces.
fn seal_io(f: &Fixture, data: &[u8], chunk: usize) -> Vec<u8> {
    let sealer = RecordSealer::new(f.header.clone(), &f.key, &f.signer).unwrap();
    let mut w = RecordWriter::new(Vec::new(), sealer).unwrap();
    for piece in data.chunks(chunk.max(1)) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

/// Encrypts with the push API.
fn seal_push(f: &Fixture, data: &[u8]) -> Vec<u8> {
    let seg = f.header.segment_size() as usize;
    let mut sealer = RecordSealer::new(f.header.clone(), &f.key, &f.signer).unwrap();
    let mut out = f.header.to_bytes();
    let mut rest = data;
    // Full segments are sealed as non-last only when more data follows.
    while rest.len() > seg {
        out.extend(sealer.seal_segment(&rest[..seg]).unwrap());
        rest = &rest[seg..];
    }
    out.extend(sealer.seal_last(rest).unwrap());
    out
}

/// Decrypts with the push API, feeding `chunk`-byte pieces.
fn open_push(f: &Fixture, record: &[u8], chunk: usize) -> Result<Vec<u8>, Error> {
    let hlen = f.header.as_bytes().len();
    let header = RecordHeader::from_bytes(
        record
            .get(..hlen)
            .ok_or(Error::Malformed("record header"))?,
    )?;
    let key = decapsulate_original(&f.owner, header.capsule())?;
    let body = &record[header.as_bytes().len()..];
    let mut opener = RecordOpener::new(header, &key, &f.vk())?;
    let mut out = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        for seg in opener.push(piece)? {
            out.extend(seg);
        }
    }
    out.extend(opener.finish()?);
    Ok(out)
}

/// Decrypts with `decrypt_record` (the `Read` adapter inside).
fn open_io(f: &Fixture, record: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let header = decrypt_record(record, &mut out, |h| {
        let key = decapsulate_original(&f.owner, h.capsule())?;
        RecordOpener::new(h.clone(), &key, &f.vk())
    })?;
    assert_eq!(header, f.header);
    Ok(out)
}

fn inner_error(e: &std::io::Error) -> Option<&Error> {
    e.get_ref().and_then(|e| e.downcast_ref::<Error>())
}

#[test]
fn round_trips_at_segment_boundaries() {
    let f = fixture(1, MIN_SEGMENT_SIZE);
    for len in [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 7] {
        let data = plaintext(len, len as u64);
        let a = seal_io(&f, &data, 1000);
        let b = seal_push(&f, &data);
        assert_eq!(a, b, "io and push sealing agree (len {len})");
        let segments = len.div_ceil(SEG).max(1);
        assert_eq!(
            a.len(),
            f.header.as_bytes().len() + len + segments * SEGMENT_OVERHEAD
        );
        assert_eq!(open_push(&f, &a, 777).unwrap(), data);
        assert_eq!(open_push(&f, &a, a.len()).unwrap(), data);
        assert_eq!(open_io(&f, &a).unwrap(), data);
    }
}

#[test]
fn ten_mebibytes_and_three() {
    let f = fixture(2, DEFAULT_SEGMENT_SIZE);
    let data = plaintext((10 << 20) + 3, 99);
    let mut record = Vec::new();
    let sealer = RecordSealer::new(f.header.clone(), &f.key, &f.signer).unwrap();
    let n = encrypt_record(&data[..], &mut record, sealer).unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(open_io(&f, &record).unwrap(), data);
    assert_eq!(open_push(&f, &record, 1 << 20).unwrap(), data);
}

#[test]
fn reader_uses_bounded_buffers() {
    // A reader over a long record must not buffer more than ~2 segments.
    let f = fixture(3, MIN_SEGMENT_SIZE);
    let data = plaintext(50 * SEG + 5, 5);
    let record = seal_io(&f, &data, 3 * SEG);
    let mut src = &record[..];
    let header = RecordHeader::read_from(&mut src).unwrap();
    let opener = RecordOpener::new(header, &f.key, &f.vk()).unwrap();
    let mut reader = RecordReader::new(src, opener);
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let dbg = format!("{reader:?}");
        // "buffered: N" never exceeds one ciphertext segment + 1 byte.
        let buffered: usize = dbg
            .split("buffered: ")
            .nth(1)
            .map(|s| {
                s.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .unwrap_or(0);
        assert!(buffered <= UNIT + 1);
    }
    assert_eq!(out, data);
}

#[test]
fn truncation_is_detected() {
    let f = fixture(4, MIN_SEGMENT_SIZE);
    let data = plaintext(3 * SEG + 100, 4);
    let record = seal_io(&f, &data, 4096);
    let h = f.header.as_bytes().len();
    let seg_ct = UNIT;
    // Cut exactly at each segment boundary: a clear "truncated" error.
    for k in 0..=3 {
        let cut = &record[..h + k * seg_ct];
        assert!(
            matches!(open_push(&f, cut, 999), Err(Error::Truncated)),
            "cut after {k} segments"
        );
        let err = open_io(&f, cut).unwrap_err();
        assert!(matches!(inner_error(&err), Some(Error::Truncated)), "{err}");
    }
    // Cut inside a segment or inside the header: an error too.
    for cut in [h - 1, h + 5, h + seg_ct + 17, record.len() - 1] {
        assert!(open_push(&f, &record[..cut], 999).is_err() || cut < h);
        assert!(open_io(&f, &record[..cut]).is_err());
    }
    // Extra bytes after the last segment.
    let mut longer = record.clone();
    longer.push(0);
    assert!(open_push(&f, &longer, 999).is_err());
    assert!(open_io(&f, &longer).is_err());
}

#[test]
fn reordered_or_dropped_segments_fail() {
    let f = fixture(5, MIN_SEGMENT_SIZE);
    let data = plaintext(3 * SEG + 100, 5);
    let record = seal_io(&f, &data, 4096);
    let h = f.header.as_bytes().len();
    let seg_ct = UNIT;
    let segs: Vec<&[u8]> = record[h..].chunks(seg_ct).collect();
    assert_eq!(segs.len(), 4);
    let rebuild = |order: &[usize]| {
        let mut r = record[..h].to_vec();
        for &i in order {
            r.extend_from_slice(segs[i]);
        }
        r
    };
    for order in [
        [1, 0, 2, 3].as_slice(),
        &[0, 2, 1, 3],
        &[0, 1, 3],
        &[1, 2, 3],
        &[0, 0, 1, 2, 3],
    ] {
        let r = rebuild(order);
        assert!(
            matches!(open_push(&f, &r, 999), Err(Error::DecryptionFailed)),
            "{order:?}"
        );
        assert!(open_io(&f, &r).is_err());
    }
}

#[test]
fn splicing_between_records_fails() {
    // Same owner and even the same KEM key, different header: segments of
    // one record do not authenticate inside the other.
    let f = fixture(6, MIN_SEGMENT_SIZE);
    let mut rng = ChaCha20Rng::seed_from_u64(60);
    let other_header = HeaderDraft::new(
        &mut rng,
        b"record-2",
        b"patient-7",
        "medical",
        2,
        *f.header.capsule(),
    )
    .unwrap()
    .with_segment_size(MIN_SEGMENT_SIZE)
    .unwrap()
    .sign(&f.signer, b"");
    let g = Fixture {
        owner: f.owner.clone(),
        signer: f.signer.clone(),
        header: other_header,
        key: f.key.clone(),
    };
    let data = plaintext(2 * SEG + 10, 6);
    let r1 = seal_io(&f, &data, 4096);
    let r2 = seal_io(&g, &data, 4096);
    let h1 = f.header.as_bytes().len();
    let h2 = g.header.as_bytes().len();
    // Header of record 2 with the body of record 1.
    let mut spliced = r2[..h2].to_vec();
    spliced.extend_from_slice(&r1[h1..]);
    assert!(matches!(
        open_push(&g, &spliced, 999),
        Err(Error::DecryptionFailed)
    ));
    // First segment from record 1, rest from record 2.
    let mut mixed = r2[..h2].to_vec();
    mixed.extend_from_slice(&r1[h1..h1 + UNIT]);
    mixed.extend_from_slice(&r2[h2 + UNIT..]);
    assert!(matches!(
        open_push(&g, &mixed, 999),
        Err(Error::DecryptionFailed)
    ));
}

fn draft(f: &Fixture, seed: u64) -> HeaderDraft {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    HeaderDraft::new(
        &mut rng,
        b"record-1",
        b"patient-7",
        "medical",
        2,
        *f.header.capsule(),
    )
    .unwrap()
    .with_segment_size(MIN_SEGMENT_SIZE)
    .unwrap()
}

#[test]
fn key_source_must_match() {
    let f = fixture(7, MIN_SEGMENT_SIZE);
    let dem = DemKey::from_bytes(&[9u8; 32]).unwrap();
    assert!(RecordSealer::with_dem_key(f.header.clone(), &dem, &f.signer).is_err());
    let binding = b"blob binding";
    let external = draft(&f, 70)
        .with_key_source(DemKeySource::External)
        .sign(&f.signer, binding);
    assert!(RecordSealer::new(external.clone(), &f.key, &f.signer).is_err());
    // External key: round trip, and the KEM-derived key does not open it.
    let mut sealer = RecordSealer::with_dem_key(external.clone(), &dem, &f.signer).unwrap();
    let data = plaintext(SEG + 1, 7);
    let mut body = sealer.seal_segment(&data[..SEG]).unwrap();
    body.extend(sealer.seal_last(&data[SEG..]).unwrap());
    let mut opener = RecordOpener::with_dem_key(external.clone(), &dem, &f.vk(), binding).unwrap();
    let mut out: Vec<u8> = opener.push(&body).unwrap().concat();
    out.extend(opener.finish().unwrap());
    assert_eq!(out, data);
    // Another binding (another blob) does not verify.
    assert!(matches!(
        RecordOpener::with_dem_key(external.clone(), &dem, &f.vk(), b"other blob"),
        Err(Error::VerificationFailed)
    ));
    let wrong = DemKey::from_kem_key(&f.key);
    let mut opener = RecordOpener::with_dem_key(external, &wrong, &f.vk(), binding).unwrap();
    let res = opener.push(&body).and_then(|_| opener.finish());
    assert!(matches!(res, Err(Error::DecryptionFailed)));
}

/// What a grantee (or anyone else who can open a record) could do: it knows
/// the record's key, so it can seal segments that authenticate under the
/// genuine header, but it cannot sign them as the owner.
#[test]
fn key_holders_cannot_forge_segments_or_headers() {
    let f = fixture(12, MIN_SEGMENT_SIZE);
    let data = plaintext(2 * SEG + 3, 12);
    let genuine = seal_push(&f, &data);
    let mallory = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(13));
    let h = f.header.as_bytes().len();

    // Forged body under the genuine header, sealed with the real key.
    let forged_text = plaintext(2 * SEG + 3, 14);
    let mut sealer = RecordSealer::new(f.header.clone(), &f.key, &mallory).unwrap();
    let mut forged = f.header.to_bytes();
    forged.extend(sealer.seal_segment(&forged_text[..SEG]).unwrap());
    forged.extend(sealer.seal_segment(&forged_text[SEG..2 * SEG]).unwrap());
    forged.extend(sealer.seal_last(&forged_text[2 * SEG..]).unwrap());
    assert!(matches!(
        open_push(&f, &forged, 999),
        Err(Error::VerificationFailed)
    ));
    assert!(open_io(&f, &forged).is_err());
    // Not even the first segment is released.
    let mut opener = RecordOpener::new(f.header.clone(), &f.key, &f.vk()).unwrap();
    assert!(opener.push(&forged[h..h + UNIT + 1]).is_err());

    // Only the last segment replaced: everything before it was genuine,
    // and the forged tail is refused.
    let mut spliced = genuine[..h + 2 * UNIT].to_vec();
    let mut tail = RecordSealer::new(f.header.clone(), &f.key, &mallory).unwrap();
    tail.seal_segment(&forged_text[..SEG]).unwrap();
    tail.seal_segment(&forged_text[SEG..2 * SEG]).unwrap();
    spliced.extend(tail.seal_last(b"no allergies").unwrap());
    assert!(matches!(
        open_push(&f, &spliced, 999),
        Err(Error::VerificationFailed)
    ));

    // A whole new header signed by someone else is refused before any
    // segment is looked at.
    let fake = draft(&f, 15).sign(&mallory, b"");
    assert!(matches!(
        RecordOpener::new(fake, &f.key, &f.vk()),
        Err(Error::VerificationFailed)
    ));
    // Unsigned version-1 headers are not read at all.
    let mut v1 = f.header.to_bytes();
    v1[4] = 1;
    assert!(RecordHeader::from_bytes(&v1).is_err());
}

#[test]
fn header_parameters_are_validated() {
    let f = fixture(8, MIN_SEGMENT_SIZE);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let capsule = *f.header.capsule();
    let signer = &f.signer;
    for size in [0, MIN_SEGMENT_SIZE - 1, (16 << 20) + 1, u32::MAX] {
        assert!(draft(&f, 80).with_segment_size(size).is_err());
    }
    assert!(draft(&f, 80).with_segment_size(16 << 20).is_ok());
    assert!(RecordHeader::new(&mut rng, b"", b"o", "p", 0, capsule, signer).is_err());
    assert!(RecordHeader::new(&mut rng, b"r", b"", "p", 0, capsule, signer).is_err());
    assert!(RecordHeader::new(&mut rng, b"r", b"o", "", 0, capsule, signer).is_err());
    assert!(RecordHeader::new(&mut rng, &[1u8; 1025], b"o", "p", 0, capsule, signer).is_err());
    let longest = RecordHeader::new(
        &mut rng,
        &[1u8; 1024],
        &[2u8; 1024],
        &"p".repeat(255),
        0,
        capsule,
        signer,
    )
    .unwrap();
    assert_eq!(
        longest.as_bytes().len(),
        sesphr_crypto::record::MAX_HEADER_LEN
    );
    assert_eq!(
        RecordHeader::from_bytes(longest.as_bytes()).unwrap(),
        longest
    );
    // Wrong segment lengths are refused by the push API.
    let mut sealer = RecordSealer::new(f.header.clone(), &f.key, &f.signer).unwrap();
    assert!(sealer.seal_segment(&[0u8; 10]).is_err());
    assert!(sealer.seal_last(&vec![0u8; SEG + 1]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_bit_flip_is_rejected(len in 0usize..(3 * SEG), pos in any::<prop::sample::Index>(), bit in 0u8..8, chunk in 1usize..10_000) {
        let f = fixture(9, MIN_SEGMENT_SIZE);
        let data = plaintext(len, len as u64);
        let mut record = seal_io(&f, &data, chunk);
        prop_assert_eq!(&open_push(&f, &record, chunk).unwrap(), &data);
        let i = pos.index(record.len());
        record[i] ^= 1 << bit;
        prop_assert!(open_io(&f, &record).is_err());
        let h = f.header.as_bytes().len();
        if i >= h {
            prop_assert!(matches!(
                open_push(&f, &record, chunk),
                Err(Error::DecryptionFailed | Error::VerificationFailed)
            ));
        } else {
            prop_assert!(open_push(&f, &record, chunk).is_err());
        }
    }

    #[test]
    fn any_chunking_round_trips(len in 0usize..(4 * SEG), wchunk in 1usize..9000, rchunk in 1usize..9000) {
        let f = fixture(10, MIN_SEGMENT_SIZE);
        let data = plaintext(len, 3);
        let record = seal_io(&f, &data, wchunk);
        prop_assert_eq!(&record, &seal_push(&f, &data));
        prop_assert_eq!(open_push(&f, &record, rchunk).unwrap(), data);
    }
}

#[test]
fn in_place_segment_api() {
    let f = fixture(11, MIN_SEGMENT_SIZE);
    let data = plaintext(2 * SEG + 9, 11);
    let record = seal_push(&f, &data);
    let h = f.header.as_bytes().len();
    let seg_ct = UNIT;
    let mut opener = RecordOpener::new(f.header.clone(), &f.key, &f.vk()).unwrap();
    let mut out = Vec::new();
    for k in 0..2 {
        let mut buf = record[h + k * seg_ct..h + (k + 1) * seg_ct].to_vec();
        opener.open_segment_in_place(&mut buf).unwrap();
        out.extend_from_slice(&buf);
    }
    let mut last = record[h + 2 * seg_ct..].to_vec();
    opener.open_last_in_place(&mut last).unwrap();
    out.extend_from_slice(&last);
    assert_eq!(out, data);

    // A non-last segment presented as last is a truncation; a wrong size is refused.
    let opener = RecordOpener::new(f.header.clone(), &f.key, &f.vk()).unwrap();
    let mut first = record[h..h + seg_ct].to_vec();
    assert!(matches!(
        opener.open_last_in_place(&mut first),
        Err(Error::Truncated)
    ));
    let mut opener = RecordOpener::new(f.header.clone(), &f.key, &f.vk()).unwrap();
    let mut short = record[h..h + seg_ct - 1].to_vec();
    assert!(matches!(
        opener.open_segment_in_place(&mut short),
        Err(Error::InvalidParameter(_))
    ));
    // A tampered segment poisons the opener.
    let mut bad = record[h..h + seg_ct].to_vec();
    bad[3] ^= 1;
    assert!(matches!(
        opener.open_segment_in_place(&mut bad),
        Err(Error::DecryptionFailed)
    ));
    let mut good = record[h..h + seg_ct].to_vec();
    assert!(opener.open_segment_in_place(&mut good).is_err());
}

/// Seals `data` with the index-addressed sealer on `threads` threads, each
/// taking every `threads`-th segment, so segments are sealed out of order.
fn seal_parallel(f: &Fixture, data: &[u8], threads: usize) -> Vec<u8> {
    let seg = f.header.segment_size() as usize;
    let sealer = RecordSealer::new(f.header.clone(), &f.key, &f.signer)
        .unwrap()
        .into_parallel()
        .unwrap();
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(seg).collect()
    };
    let count = chunks.len();
    let mut sealed: Vec<Vec<u8>> = vec![Vec::new(); count];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (sealer, chunks) = (&sealer, &chunks);
                s.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let mut buf = chunks[i].to_vec();
                            sealer.seal_at(i as u32, i + 1 == count, &mut buf).unwrap();
                            (i, buf)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, buf) in h.join().unwrap() {
                sealed[i] = buf;
            }
        }
    });
    let mut out = f.header.to_bytes();
    out.extend(sealed.concat());
    out
}

/// Opens `record` with the index-addressed opener, segment by segment in
/// reverse order; the first failure in record order is returned.
fn open_parallel(f: &Fixture, record: &[u8]) -> Result<Vec<u8>, Error> {
    let hlen = f.header.as_bytes().len();
    let opener = RecordOpener::new(f.header.clone(), &f.key, &f.vk())?.into_parallel()?;
    let body = &record[hlen..];
    let unit = opener.unit();
    // As on the wire: a unit is the last one when nothing follows it.
    let mut units: Vec<&[u8]> = body.chunks(unit).collect();
    if units.is_empty() {
        units.push(&[]);
    }
    let count = units.len();
    let mut opened: Vec<Result<Vec<u8>, Error>> = (0..count)
        .rev()
        .map(|i| {
            let mut buf = units[i].to_vec();
            opener
                .open_at(i as u32, i + 1 == count, &mut buf)
                .map(|()| buf)
        })
        .collect();
    opened.reverse();
    opened
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.concat())
}

/// Segments sealed in any order on several threads are the sequential
/// sealer's bytes (signatures included), for lengths around every segment
/// boundary; both openers read them.
#[test]
fn parallel_sealing_gives_the_sequential_bytes() {
    let f = fixture(40, MIN_SEGMENT_SIZE);
    for len in [
        0,
        1,
        SEG - 1,
        SEG,
        SEG + 1,
        2 * SEG,
        3 * SEG - 1,
        5 * SEG,
        7 * SEG + 3,
    ] {
        let data = plaintext(len, len as u64);
        let sequential = seal_push(&f, &data);
        for threads in [1, 2, 3] {
            assert_eq!(
                seal_parallel(&f, &data, threads),
                sequential,
                "len {len}, {threads} threads"
            );
        }
        assert_eq!(open_parallel(&f, &sequential).unwrap(), data, "len {len}");
        assert_eq!(open_push(&f, &sequential, 1000).unwrap(), data);
    }
}

/// The index-addressed opener fails where the sequential one does, with
/// the same errors: truncation at a segment boundary or inside one, a bit
/// flip, two segments swapped, a signature of another segment.
#[test]
fn parallel_opening_fails_as_the_sequential_opener() {
    let f = fixture(41, MIN_SEGMENT_SIZE);
    let data = plaintext(4 * SEG + 9, 3);
    let record = seal_push(&f, &data);
    let hlen = f.header.as_bytes().len();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut at a boundary", record[..hlen + 2 * UNIT].to_vec()),
        (
            "cut inside a segment",
            record[..hlen + 2 * UNIT + 100].to_vec(),
        ),
        ("no segments", record[..hlen].to_vec()),
    ];
    let mut flipped = record.clone();
    flipped[hlen + UNIT + 5] ^= 1;
    cases.push(("bit flip", flipped));
    let mut swapped = record.clone();
    swapped[hlen..hlen + 2 * UNIT].rotate_left(UNIT);
    cases.push(("swapped", swapped));
    let mut resigned = record.clone();
    let (a, b) = (hlen + UNIT - 64, hlen + 2 * UNIT - 64);
    let other = resigned[b..b + 64].to_vec();
    resigned[a..a + 64].copy_from_slice(&other);
    cases.push(("another segment's signature", resigned));
    for (what, bad) in cases {
        let sequential = open_push(&f, &bad, 777).unwrap_err();
        let parallel = open_parallel(&f, &bad).unwrap_err();
        assert_eq!(format!("{parallel:?}"), format!("{sequential:?}"), "{what}");
    }
    // Going parallel after a segment passed through the sequential API
    // would let an index be used twice.
    let mut sealer = RecordSealer::new(f.header.clone(), &f.key, &f.signer).unwrap();
    sealer.seal_segment(&data[..SEG]).unwrap();
    assert!(sealer.into_parallel().is_err());
    let mut opener = RecordOpener::new(f.header.clone(), &f.key, &f.vk()).unwrap();
    opener.push(&record[hlen..hlen + 10]).unwrap();
    assert!(opener.into_parallel().is_err());
}

//! Convergent blob encryption and content-key wrapping.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_dedup::Error;
use sesphr_dedup::convergent::{
    self, BLOB_HEADER_LEN, BlobHeader, BlobOpener, BlobSealer, ContentKey, MIN_BLOB_SEGMENT_SIZE,
    TAG_LEN, WRAPPED_KEY_LEN,
};

const SEG: u32 = MIN_BLOB_SEGMENT_SIZE;
const SEG_LEN: usize = SEG as usize;

fn key(byte: u8) -> ContentKey {
    convergent::content_key(&[byte; 32])
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn seal(key: &ContentKey, plaintext: &[u8]) -> Vec<u8> {
    convergent::seal_blob_with_segment_size(key, plaintext, SEG).unwrap()
}

/// Opens `blob` pushing it in chunks of the given sizes (cycled).
fn open_chunked(key: &ContentKey, blob: &[u8], chunks: &[usize]) -> Result<Vec<u8>, Error> {
    let mut opener = BlobOpener::new(key);
    let mut out = Vec::new();
    let mut rest = blob;
    let mut i = 0;
    while !rest.is_empty() {
        let n = chunks[i % chunks.len()].clamp(1, rest.len());
        i += 1;
        for seg in opener.push(&rest[..n])? {
            assert!(seg.len() == SEG_LEN, "only full segments before the last");
            out.extend_from_slice(&seg);
        }
        rest = &rest[n..];
    }
    out.extend_from_slice(&opener.finish()?);
    Ok(out)
}

const EDGE_SIZES: [usize; 9] = [
    0,
    1,
    SEG_LEN - 1,
    SEG_LEN,
    SEG_LEN + 1,
    2 * SEG_LEN,
    2 * SEG_LEN + 7,
    3 * SEG_LEN - 1,
    5 * SEG_LEN,
];

#[test]
fn round_trip_edge_sizes() {
    let k = key(1);
    for len in EDGE_SIZES {
        let pt = data(len, 3);
        let blob = seal(&k, &pt);
        let segments = len.div_ceil(SEG_LEN).max(1);
        assert_eq!(
            blob.len(),
            BLOB_HEADER_LEN + len + segments * TAG_LEN,
            "len {len}"
        );
        assert_eq!(
            &blob[..BLOB_HEADER_LEN],
            &BlobHeader::new(SEG).unwrap().to_bytes()
        );
        assert_eq!(convergent::open_blob(&k, &blob).unwrap(), pt, "len {len}");
        for chunks in [
            &[1usize][..],
            &[7, 4096, 3],
            &[SEG_LEN + TAG_LEN],
            &[usize::MAX],
        ] {
            assert_eq!(open_chunked(&k, &blob, chunks).unwrap(), pt, "len {len}");
        }
    }
}

#[test]
fn default_segment_size_round_trip() {
    let k = key(2);
    for len in [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1] {
        let pt = data(len, 9);
        let blob = convergent::seal_blob(&k, &pt);
        assert_eq!(u32::from_be_bytes(blob[5..9].try_into().unwrap()), 1 << 20);
        assert_eq!(convergent::open_blob(&k, &blob).unwrap(), pt);
    }
}

#[test]
fn sealer_matches_seal_blob_and_checks_sizes() {
    let k = key(4);
    let pt = data(2 * SEG_LEN + 5, 1);
    let mut sealer = BlobSealer::with_segment_size(&k, SEG).unwrap();
    assert!(matches!(
        sealer.seal_segment(&pt[..SEG_LEN - 1]),
        Err(Error::InvalidParameter(_))
    ));
    let mut blob = sealer.header_bytes().to_vec();
    blob.extend(sealer.seal_segment(&pt[..SEG_LEN]).unwrap());
    let mut buf = pt[SEG_LEN..2 * SEG_LEN].to_vec();
    sealer.seal_segment_in_place(&mut buf).unwrap();
    blob.extend(buf);
    blob.extend(sealer.seal_last(&pt[2 * SEG_LEN..]).unwrap());
    assert_eq!(blob, seal(&k, &pt));

    let sealer = BlobSealer::with_segment_size(&k, SEG).unwrap();
    assert!(sealer.seal_last(&vec![0; SEG_LEN + 1]).is_err());
    assert!(BlobSealer::with_segment_size(&k, SEG - 1).is_err());
    assert!(BlobSealer::with_segment_size(&k, (16 << 20) + 1).is_err());
}

#[test]
fn equal_plaintexts_equal_blobs_and_other_keys_or_sizes_differ() {
    let pt = data(3 * SEG_LEN + 11, 5);
    let a = seal(&key(7), &pt);
    let b = seal(&key(7), &pt.clone());
    assert_eq!(a, b);
    assert_eq!(convergent::blob_id(&a), convergent::blob_id(&b));
    assert_ne!(a, seal(&key(8), &pt));
    let c = convergent::seal_blob_with_segment_size(&key(7), &pt, 2 * SEG).unwrap();
    // Another segment size: another key and nonce prefix, so even the
    // first segment's bytes differ.
    assert_ne!(
        a[BLOB_HEADER_LEN..BLOB_HEADER_LEN + 64],
        c[BLOB_HEADER_LEN..BLOB_HEADER_LEN + 64]
    );
}

#[test]
fn truncation_is_detected() {
    let k = key(9);
    let pt = data(3 * SEG_LEN, 2);
    let blob = seal(&k, &pt);
    // Cut at a segment boundary: the remaining last segment authenticates
    // only as a non-last one.
    let cut = BLOB_HEADER_LEN + 2 * (SEG_LEN + TAG_LEN);
    assert_eq!(
        convergent::open_blob(&k, &blob[..cut]),
        Err(Error::Truncated)
    );
    assert_eq!(
        convergent::open_blob(&k, &blob[..BLOB_HEADER_LEN]),
        Err(Error::Truncated)
    );
    assert_eq!(convergent::open_blob(&k, &blob[..3]), Err(Error::Truncated));
    assert_eq!(convergent::open_blob(&k, &[]), Err(Error::Truncated));
    for cut in [blob.len() - 1, cut - 1, cut + 1, BLOB_HEADER_LEN + 15] {
        assert!(
            convergent::open_blob(&k, &blob[..cut]).is_err(),
            "cut {cut}"
        );
    }
    // Appending bytes fails too.
    let mut longer = blob.clone();
    longer.push(0);
    assert!(convergent::open_blob(&k, &longer).is_err());
}

#[test]
fn wrong_key_fails_and_poisons() {
    let pt = data(2 * SEG_LEN + 1, 2);
    let blob = seal(&key(1), &pt);
    let mut opener = BlobOpener::new(&key(2));
    assert_eq!(opener.push(&blob), Err(Error::DecryptionFailed));
    assert_eq!(opener.push(&[]), Err(Error::DecryptionFailed));
    assert!(opener.finish().is_err());
}

#[test]
fn bad_header_is_malformed() {
    let k = key(1);
    let blob = seal(&k, b"hello");
    for (i, b) in [(0, b'X'), (4, 2), (5, 0xff), (8, 1)] {
        let mut bad = blob.clone();
        bad[i] = b;
        let r = convergent::open_blob(&k, &bad);
        assert!(r.is_err(), "byte {i}");
    }
    let mut bad = blob.clone();
    bad[4] = 2;
    assert_eq!(
        convergent::open_blob(&k, &bad),
        Err(Error::Malformed("blob header"))
    );
    assert!(BlobHeader::from_bytes(&blob[..8]).is_err());
    assert!(BlobHeader::from_bytes(&blob[..10]).is_err());
}

#[test]
fn streaming_blob_id_and_digest() {
    let pt = data(10_000, 4);
    let blob = seal(&key(3), &pt);
    let mut h = convergent::Sha256Hasher::new();
    for chunk in blob.chunks(333) {
        h.update(chunk);
    }
    assert_eq!(h.finalize(), convergent::blob_id(&blob));
    let mut h = convergent::Sha256Hasher::new();
    h.update(&pt[..5]);
    h.update(&pt[5..]);
    assert_eq!(h.finalize(), convergent::content_digest(&pt));
}

#[test]
fn key_wrapping() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let kem = [0x42u8; 32];
    let k = key(6);
    let wrapped = convergent::wrap_content_key(&mut rng, &kem, &k, b"record-1");
    assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
    assert_eq!(
        convergent::unwrap_content_key(&kem, &wrapped, b"record-1").unwrap(),
        k
    );
    // Fresh nonce every time.
    assert_ne!(
        wrapped,
        convergent::wrap_content_key(&mut rng, &kem, &k, b"record-1")
    );
    assert_eq!(
        convergent::unwrap_content_key(&kem, &wrapped, b"record-2"),
        Err(Error::DecryptionFailed)
    );
    assert_eq!(
        convergent::unwrap_content_key(&[0x43; 32], &wrapped, b"record-1"),
        Err(Error::DecryptionFailed)
    );
    for bit in 0..WRAPPED_KEY_LEN * 8 {
        let mut bad = wrapped;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            convergent::unwrap_content_key(&kem, &bad, b"record-1"),
            Err(Error::DecryptionFailed)
        );
    }
    assert!(matches!(
        convergent::unwrap_content_key(&kem, &wrapped[..59], b"record-1"),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn content_key_is_redacted_and_round_trips() {
    let k = key(1);
    assert_eq!(format!("{k:?}"), "ContentKey(<redacted>)");
    assert_eq!(ContentKey::from_bytes(&*k.to_bytes()).unwrap(), k);
    assert!(ContentKey::from_bytes(&[0; 31]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_any_length_any_chunking(
        len in 0usize..(4 * SEG_LEN + 100),
        seed in any::<u8>(),
        kb in any::<u8>(),
        chunks in proptest::collection::vec(1usize..10_000, 1..5),
    ) {
        let k = key(kb);
        let pt = data(len, seed);
        let blob = seal(&k, &pt);
        prop_assert_eq!(&blob, &seal(&k, &pt));
        prop_assert_eq!(open_chunked(&k, &blob, &chunks).unwrap(), pt);
    }

    #[test]
    fn any_flipped_bit_fails(
        len in 0usize..(3 * SEG_LEN),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let k = key(11);
        let mut blob = seal(&k, &data(len, 1));
        let i = pos.index(blob.len());
        blob[i] ^= 1 << bit;
        prop_assert!(convergent::open_blob(&k, &blob).is_err());
    }

    #[test]
    fn random_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(convergent::open_blob(&key(1), &bytes).is_err());
        prop_assert!(BlobHeader::from_bytes(&bytes).is_err());
        prop_assert!(convergent::unwrap_content_key(&[1; 32], &bytes, b"").is_err());
    }
}

/// Seals `plaintext` with the index-addressed sealer, the segments in
/// reverse order.
fn seal_parallel(key: &ContentKey, plaintext: &[u8]) -> Vec<u8> {
    let sealer = BlobSealer::with_segment_size(key, SEG).unwrap();
    let mut out = sealer.header_bytes().to_vec();
    let cipher = sealer.into_parallel().unwrap();
    let mut chunks: Vec<&[u8]> = plaintext.chunks(SEG_LEN).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let count = chunks.len();
    let mut sealed: Vec<Vec<u8>> = (0..count)
        .rev()
        .map(|i| {
            let mut buf = chunks[i].to_vec();
            cipher.seal_at(i as u32, i + 1 == count, &mut buf).unwrap();
            buf
        })
        .collect();
    sealed.reverse();
    out.extend(sealed.concat());
    out
}

/// Opens `blob` with the index-addressed opener after pushing exactly its
/// header, the segments in reverse order; the first failure in blob order
/// is returned, as a sequential opener would report it.
fn open_parallel(key: &ContentKey, blob: &[u8]) -> Result<Vec<u8>, Error> {
    let mut opener = BlobOpener::new(key);
    let head = blob.len().min(BLOB_HEADER_LEN);
    assert!(opener.push(&blob[..head])?.is_empty());
    let (header, cipher) = opener.into_parallel()?;
    assert_eq!(header.segment_size(), SEG);
    let mut units: Vec<&[u8]> = blob[head..].chunks(SEG_LEN + TAG_LEN).collect();
    if units.is_empty() {
        units.push(&[]);
    }
    let count = units.len();
    let mut opened: Vec<Result<Vec<u8>, Error>> = (0..count)
        .rev()
        .map(|i| {
            let mut buf = units[i].to_vec();
            cipher
                .open_at(i as u32, i + 1 == count, &mut buf)
                .map(|()| buf)
                .map_err(|e| match e {
                    sesphr_crypto::Error::Truncated => Error::Truncated,
                    _ => Error::DecryptionFailed,
                })
        })
        .collect();
    opened.reverse();
    opened
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.concat())
}

#[test]
fn parallel_sealing_and_opening_give_the_sequential_bytes() {
    let k = key(21);
    for len in EDGE_SIZES {
        let pt = data(len, 4);
        let blob = seal(&k, &pt);
        assert_eq!(seal_parallel(&k, &pt), blob, "len {len}");
        assert_eq!(open_parallel(&k, &blob).unwrap(), pt, "len {len}");
    }
}

#[test]
fn parallel_opening_fails_as_the_sequential_opener() {
    let k = key(22);
    let blob = seal(&k, &data(4 * SEG_LEN + 9, 5));
    let unit = SEG_LEN + TAG_LEN;
    let mut cases = vec![
        (
            "cut at a boundary",
            blob[..BLOB_HEADER_LEN + 2 * unit].to_vec(),
        ),
        (
            "cut inside",
            blob[..BLOB_HEADER_LEN + 2 * unit + 100].to_vec(),
        ),
        ("no segments", blob[..BLOB_HEADER_LEN].to_vec()),
    ];
    let mut flipped = blob.clone();
    flipped[BLOB_HEADER_LEN + unit + 5] ^= 1;
    cases.push(("bit flip", flipped));
    let mut swapped = blob.clone();
    swapped[BLOB_HEADER_LEN..BLOB_HEADER_LEN + 2 * unit].rotate_left(unit);
    cases.push(("swapped", swapped));
    for (what, bad) in cases {
        assert_eq!(
            open_parallel(&k, &bad),
            convergent::open_blob(&k, &bad),
            "{what}"
        );
        assert!(open_parallel(&k, &bad).is_err(), "{what}");
    }
    // A short header: nothing to go parallel from.
    assert_eq!(open_parallel(&k, &blob[..4]), Err(Error::Truncated));
    // Going parallel after a segment passed through the sequential API
    // would let an index be used twice, or lose pushed bytes.
    let mut sealer = BlobSealer::with_segment_size(&k, SEG).unwrap();
    sealer.seal_segment(&data(SEG_LEN, 1)).unwrap();
    assert!(sealer.into_parallel().is_err());
    let mut opener = BlobOpener::new(&k);
    opener.push(&blob[..BLOB_HEADER_LEN + 10]).unwrap();
    assert!(opener.into_parallel().is_err());
}

//! Streaming record encryption + decryption of 64 MiB against one
//! single-shot AES-256-GCM encryption + decryption of the same bytes.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sesphr_crypto::{
    RecordHeader, RecordOpener, RecordReader, RecordSealer, RecordWriter, SecretKey,
    decrypt_record, encapsulate, encrypt_record,
};

const SIZE: usize = 64 << 20;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(10)
}

fn stream(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut data = vec![0u8; SIZE];
    rng.fill_bytes(&mut data);
    let owner = SecretKey::generate(&mut rng);
    let (capsule, kem_key) = encapsulate(&mut rng, &owner.public_key());
    let header = RecordHeader::new(&mut rng, b"bench", b"owner", "medical", 0, capsule).unwrap();
    let seg = header.segment_size() as usize;

    let mut g = c.benchmark_group("aead_64MiB_encrypt_decrypt");
    g.throughput(Throughput::Bytes(SIZE as u64));

    let key = [7u8; 32];
    let aead = Aes256Gcm::new(&key.into());
    let nonce = Nonce::from([1u8; 12]);
    let mut buf = data.clone();
    g.bench_function("single-shot-aes-gcm", |b| {
        b.iter(|| {
            let tag = aead
                .encrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into())
                .unwrap();
            aead.decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag)
                .unwrap();
            black_box(&buf);
        })
    });

    // Segments already in their own buffers (as read from a file or the
    // network), sealed and then opened in place: the same work as the
    // single-shot call, split into 1 MiB STREAM segments.
    let mut segments: Vec<Vec<u8>> = data
        .chunks(seg)
        .map(|c| {
            let mut v = Vec::with_capacity(seg + 16);
            v.extend_from_slice(c);
            v
        })
        .collect();
    g.bench_function("stream-segments-in-place", |b| {
        b.iter(|| {
            let mut sealer = RecordSealer::new(header.clone(), &kem_key).unwrap();
            let mut opener = RecordOpener::new(header.clone(), &kem_key).unwrap();
            let (last, body) = segments.split_last_mut().unwrap();
            for s in body.iter_mut() {
                sealer.seal_segment_in_place(s).unwrap();
            }
            sealer.seal_last_in_place(last).unwrap();
            for s in body.iter_mut() {
                opener.open_segment_in_place(s).unwrap();
            }
            opener.open_last_in_place(last).unwrap();
            black_box(&segments);
        })
    });

    // Whole-record helpers: `encrypt_record` into memory, `decrypt_record`
    // into a sink.
    let mut record2 = Vec::with_capacity(SIZE + SIZE / seg * 16 + 1024);
    g.bench_function("stream-encrypt-decrypt-record", |b| {
        b.iter(|| {
            record2.clear();
            let sealer = RecordSealer::new(header.clone(), &kem_key).unwrap();
            encrypt_record(&data[..], &mut record2, sealer).unwrap();
            decrypt_record(&record2[..], std::io::sink(), |h| {
                RecordOpener::new(h.clone(), &kem_key)
            })
            .unwrap();
        })
    });

    // Push API, in place: what an async caller feeding 1 MiB chunks does.
    let mut seg_buf = Vec::with_capacity(seg + 16);
    let mut ct = Vec::with_capacity(SIZE + SIZE / seg * 16 + 16);
    g.bench_function("stream-push-in-place", |b| {
        b.iter(|| {
            let mut sealer = RecordSealer::new(header.clone(), &kem_key).unwrap();
            ct.clear();
            let mut chunks = data.chunks(seg).peekable();
            while let Some(chunk) = chunks.next() {
                seg_buf.clear();
                seg_buf.extend_from_slice(chunk);
                if chunks.peek().is_some() {
                    sealer.seal_segment_in_place(&mut seg_buf).unwrap();
                } else {
                    break;
                }
                ct.extend_from_slice(&seg_buf);
            }
            sealer.seal_last_in_place(&mut seg_buf).unwrap();
            ct.extend_from_slice(&seg_buf);
            let mut opener = RecordOpener::new(header.clone(), &kem_key).unwrap();
            let mut n = 0;
            for chunk in ct.chunks(seg + 16) {
                for p in opener.push(chunk).unwrap() {
                    n += p.len();
                }
            }
            n += opener.finish().unwrap().len();
            assert_eq!(n, SIZE);
        })
    });

    // std::io adapters end to end.
    let mut record = Vec::with_capacity(SIZE + SIZE / seg * 16 + 1024);
    g.bench_function("stream-io-adapters", |b| {
        b.iter(|| {
            record.clear();
            let sealer = RecordSealer::new(header.clone(), &kem_key).unwrap();
            let mut w = RecordWriter::new(&mut record, sealer).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap();
            let mut src = &record[..];
            let h = RecordHeader::read_from(&mut src).unwrap();
            let opener = RecordOpener::new(h, &kem_key).unwrap();
            let mut reader = RecordReader::new(src, opener);
            let n = std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
            assert_eq!(n as usize, SIZE);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = stream
}
criterion_main!(benches);

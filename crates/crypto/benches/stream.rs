//! Streaming record encryption + decryption of 64 MiB against one
//! single-shot AES-256-GCM encryption + decryption of the same bytes.

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sesphr_crypto::{RecordOpener, RecordSealer};

#[path = "../tests/support/stream.rs"]
mod stream_fixture;

use stream_fixture::SIZE;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(10)
}

fn stream(c: &mut Criterion) {
    let fx = stream_fixture::stream();
    let (data, kem_key, header, seg) = (&fx.data, &fx.kem_key, &fx.header, fx.seg);

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
    let mut segments = fx.segments();
    g.bench_function("stream-segments-in-place", |b| {
        b.iter(|| {
            fx.seal_open_in_place(&mut segments);
            black_box(&segments);
        })
    });

    // Whole-record helpers: `encrypt_record` into memory, `decrypt_record`
    // into a sink.
    let mut record2 = fx.record_buf();
    g.bench_function("stream-encrypt-decrypt-record", |b| {
        b.iter(|| fx.encrypt_decrypt_record(&mut record2))
    });

    // Push API, in place: what an async caller feeding 1 MiB chunks does.
    let mut seg_buf = Vec::with_capacity(seg + 16);
    let mut ct = Vec::with_capacity(SIZE + SIZE / seg * 16 + 16);
    g.bench_function("stream-push-in-place", |b| {
        b.iter(|| {
            let mut sealer = RecordSealer::new(header.clone(), kem_key, &fx.signer).unwrap();
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
            let mut opener = RecordOpener::new(header.clone(), kem_key, &fx.owner).unwrap();
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
    let mut record = fx.record_buf();
    g.bench_function("stream-io-adapters", |b| {
        b.iter(|| {
            let n = fx.write_read_record(&mut record);
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

//! Quick min-of-N timings of the PRE operations next to umbral-pre, robust
//! to a noisy machine (the minimum is what the CPU needs when nothing else
//! interferes). Criterion benches (`cargo bench`) are the reference; this is
//! a development aid:
//! `cargo test --release -p sesphr-crypto --test timing -- --ignored --nocapture`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_crypto as ours;

fn min_time(iters: u32, mut f: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..iters {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

#[test]
#[ignore = "timing aid; run in release with --nocapture"]
fn pre_ops_min_of_n() {
    ours::warm_up();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let owner = ours::SecretKey::generate(&mut rng);
    let owner_pk = owner.public_key();
    let grantee = ours::SecretKey::generate(&mut rng);
    let grantee_pk = grantee.public_key();
    let signer = ours::SigningKey::generate(&mut rng);
    let vk = signer.verifying_key();
    let (capsule, _) = ours::encapsulate(&mut rng, &owner_pk);
    let kfrags = ours::generate_kfrags(&mut rng, &owner, &grantee_pk, &signer, 2, 3).unwrap();
    let vcfrags: Vec<_> = kfrags
        .iter()
        .map(|k| ours::reencrypt(&mut rng, &capsule, k))
        .collect();
    let cfrag = vcfrags[0].unverify();

    let mut urng =
        <rand_chacha_03::ChaCha20Rng as rand_chacha_03::rand_core::SeedableRng>::seed_from_u64(1);
    let u_owner = umbral_pre::SecretKey::random_with_rng(&mut urng);
    let u_owner_pk = u_owner.public_key();
    let u_grantee = umbral_pre::SecretKey::random_with_rng(&mut urng);
    let u_grantee_pk = u_grantee.public_key();
    let u_signer = umbral_pre::Signer::new(umbral_pre::SecretKey::random_with_rng(&mut urng));
    let u_vk = u_signer.verifying_key();
    let (u_capsule, _) = umbral_pre::bench::capsule_from_public_key(&u_owner_pk);
    let u_kfrags = umbral_pre::generate_kfrags_with_rng(
        &mut urng,
        &u_owner,
        &u_grantee_pk,
        &u_signer,
        2,
        3,
        true,
        true,
    );
    let u_cfrags: Vec<_> = u_kfrags
        .iter()
        .map(|k| umbral_pre::reencrypt_with_rng(&mut urng, &u_capsule, k.clone()).unverify())
        .collect();

    let n = 300;
    let rows: Vec<(&str, Duration, Duration)> = vec![
        (
            "encapsulate",
            min_time(n, || {
                black_box(ours::encapsulate(&mut rng, &owner_pk));
            }),
            min_time(n, || {
                black_box(umbral_pre::bench::capsule_from_public_key(&u_owner_pk));
            }),
        ),
        (
            "generate_kfrags 2/3",
            min_time(n / 3, || {
                black_box(
                    ours::generate_kfrags(&mut rng, &owner, &grantee_pk, &signer, 2, 3).unwrap(),
                );
            }),
            min_time(n / 3, || {
                black_box(umbral_pre::generate_kfrags_with_rng(
                    &mut urng,
                    &u_owner,
                    &u_grantee_pk,
                    &u_signer,
                    2,
                    3,
                    true,
                    true,
                ));
            }),
        ),
        (
            "reencrypt",
            min_time(n, || {
                black_box(ours::reencrypt(&mut rng, &capsule, &kfrags[0]));
            }),
            min_time(n, || {
                black_box(umbral_pre::reencrypt_with_rng(
                    &mut urng,
                    &u_capsule,
                    u_kfrags[0].clone(),
                ));
            }),
        ),
        (
            "cfrag verify",
            min_time(n, || {
                black_box(cfrag.verify(&capsule, &vk, &owner_pk, &grantee_pk).unwrap());
            }),
            min_time(n, || {
                black_box(
                    u_cfrags[0]
                        .clone()
                        .verify(&u_capsule, &u_vk, &u_owner_pk, &u_grantee_pk)
                        .unwrap(),
                );
            }),
        ),
        (
            "decapsulate_reencrypted 2",
            min_time(n, || {
                black_box(
                    ours::decapsulate_reencrypted(&grantee, &owner_pk, &capsule, &vcfrags[..2])
                        .unwrap(),
                );
            }),
            min_time(n, || {
                black_box(
                    umbral_pre::bench::capsule_open_reencrypted(
                        &u_capsule,
                        &u_grantee,
                        &u_owner_pk,
                        &u_cfrags[..2],
                    )
                    .unwrap(),
                );
            }),
        ),
    ];
    println!(
        "{:28} {:>12} {:>12} {:>7}",
        "operation", "sesphr µs", "umbral µs", "ratio"
    );
    for (name, a, b) in rows {
        println!(
            "{name:28} {:12.1} {:12.1} {:7.2}",
            a.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}

#[test]
#[ignore = "profiling aid"]
fn reencrypt_loop() {
    ours::warm_up();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let owner = ours::SecretKey::generate(&mut rng);
    let grantee_pk = ours::SecretKey::generate(&mut rng).public_key();
    let signer = ours::SigningKey::generate(&mut rng);
    let (capsule, _) = ours::encapsulate(&mut rng, &owner.public_key());
    let kfrags = ours::generate_kfrags(&mut rng, &owner, &grantee_pk, &signer, 2, 3).unwrap();
    for _ in 0..3000 {
        black_box(ours::reencrypt(&mut rng, &capsule, &kfrags[0]));
    }
}

#[test]
#[ignore = "profiling aid"]
fn decapsulate_loop() {
    ours::warm_up();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let owner = ours::SecretKey::generate(&mut rng);
    let grantee = ours::SecretKey::generate(&mut rng);
    let signer = ours::SigningKey::generate(&mut rng);
    let (capsule, _) = ours::encapsulate(&mut rng, &owner.public_key());
    let kfrags =
        ours::generate_kfrags(&mut rng, &owner, &grantee.public_key(), &signer, 2, 3).unwrap();
    let cfrags: Vec<_> = kfrags
        .iter()
        .map(|k| ours::reencrypt(&mut rng, &capsule, k))
        .collect();
    for _ in 0..2000 {
        black_box(
            ours::decapsulate_reencrypted(&grantee, &owner.public_key(), &capsule, &cfrags[..2])
                .unwrap(),
        );
    }
}

#[test]
#[ignore = "timing aid; run in release with --nocapture"]
fn stream_min_of_n() {
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
    use rand_core::RngCore;
    use std::io::Write;

    const SIZE: usize = 64 << 20;
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut data = vec![0u8; SIZE];
    rng.fill_bytes(&mut data);
    let owner = ours::SecretKey::generate(&mut rng);
    let (capsule, kem_key) = ours::encapsulate(&mut rng, &owner.public_key());
    let header =
        ours::RecordHeader::new(&mut rng, b"bench", b"owner", "medical", 0, capsule).unwrap();
    let seg = header.segment_size() as usize;
    let aead = Aes256Gcm::new(&[7u8; 32].into());
    let nonce = Nonce::from([1u8; 12]);
    let mut buf = data.clone();
    let mut segments: Vec<Vec<u8>> = data
        .chunks(seg)
        .map(|c| {
            let mut v = Vec::with_capacity(seg + 16);
            v.extend_from_slice(c);
            v
        })
        .collect();
    let mut record = Vec::with_capacity(SIZE + SIZE / seg * 16 + 1024);

    let mut best = [Duration::MAX; 4];
    for _ in 0..12 {
        // Interleave the variants so that background load hits all alike.
        best[0] = best[0].min(min_time(1, || {
            let tag = aead
                .encrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into())
                .unwrap();
            aead.decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag)
                .unwrap();
        }));
        best[1] = best[1].min(min_time(1, || {
            // Segments already in their buffers (as read from a file or the
            // network), sealed and opened in place.
            let mut sealer = ours::RecordSealer::new(header.clone(), &kem_key).unwrap();
            let mut opener = ours::RecordOpener::new(header.clone(), &kem_key).unwrap();
            let (last, body) = segments.split_last_mut().unwrap();
            for s in body.iter_mut() {
                sealer.seal_segment_in_place(s).unwrap();
            }
            sealer.seal_last_in_place(last).unwrap();
            for s in body.iter_mut() {
                opener.open_segment_in_place(s).unwrap();
            }
            opener.open_last_in_place(last).unwrap();
        }));
        best[2] = best[2].min(min_time(1, || {
            record.clear();
            let sealer = ours::RecordSealer::new(header.clone(), &kem_key).unwrap();
            ours::encrypt_record(&data[..], &mut record, sealer).unwrap();
            ours::decrypt_record(&record[..], std::io::sink(), |h| {
                ours::RecordOpener::new(h.clone(), &kem_key)
            })
            .unwrap();
        }));
        best[3] = best[3].min(min_time(1, || {
            record.clear();
            let sealer = ours::RecordSealer::new(header.clone(), &kem_key).unwrap();
            let mut w = ours::RecordWriter::new(&mut record, sealer).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap();
            let mut src = &record[..];
            let h = ours::RecordHeader::read_from(&mut src).unwrap();
            let opener = ours::RecordOpener::new(h, &kem_key).unwrap();
            let mut reader = ours::RecordReader::new(src, opener);
            std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        }));
    }
    let names = [
        "single-shot AES-256-GCM",
        "segments in place",
        "encrypt_record/decrypt_record",
        "RecordWriter/RecordReader",
    ];
    println!(
        "{:32} {:>10} {:>7}",
        "64 MiB encrypt+decrypt", "MiB/s", "ratio"
    );
    for (name, t) in names.iter().zip(best) {
        let mibs = 64.0 / t.as_secs_f64();
        let base = 64.0 / best[0].as_secs_f64();
        println!("{name:32} {mibs:10.0} {:7.2}", mibs / base);
    }
}

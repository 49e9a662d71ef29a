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

#[path = "support/pre.rs"]
mod pre_fixture;
#[path = "support/stream.rs"]
mod stream_fixture;

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
    let mut fx = pre_fixture::pre();

    let n = 300;
    let rows: Vec<(&str, Duration, Duration)> = vec![
        (
            "encapsulate",
            min_time(n, || {
                black_box(ours::encapsulate(&mut fx.rng, &fx.owner_pk));
            }),
            min_time(n, || {
                black_box(umbral_pre::bench::capsule_from_public_key(&fx.u_owner_pk));
            }),
        ),
        (
            "generate_kfrags 2/3",
            min_time(n / 3, || {
                black_box(
                    ours::generate_kfrags(&mut fx.rng, &fx.owner, &fx.grantee_pk, &fx.signer, 2, 3)
                        .unwrap(),
                );
            }),
            min_time(n / 3, || {
                black_box(umbral_pre::generate_kfrags_with_rng(
                    &mut fx.urng,
                    &fx.u_owner,
                    &fx.u_grantee_pk,
                    &fx.u_signer,
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
                black_box(ours::reencrypt(&mut fx.rng, &fx.capsule, &fx.kfrags[0]));
            }),
            min_time(n, || {
                black_box(umbral_pre::reencrypt_with_rng(
                    &mut fx.urng,
                    &fx.u_capsule,
                    fx.u_kfrags[0].clone(),
                ));
            }),
        ),
        (
            "fx.cfrag verify",
            min_time(n, || {
                black_box(
                    fx.cfrag
                        .verify(&fx.capsule, &fx.vk, &fx.owner_pk, &fx.grantee_pk)
                        .unwrap(),
                );
            }),
            min_time(n, || {
                black_box(
                    fx.u_cfrags[0]
                        .clone()
                        .verify(&fx.u_capsule, &fx.u_vk, &fx.u_owner_pk, &fx.u_grantee_pk)
                        .unwrap(),
                );
            }),
        ),
        (
            "decapsulate_reencrypted 2",
            min_time(n, || {
                black_box(
                    ours::decapsulate_reencrypted(
                        &fx.grantee,
                        &fx.owner_pk,
                        &fx.capsule,
                        &fx.vcfrags[..2],
                    )
                    .unwrap(),
                );
            }),
            min_time(n, || {
                black_box(
                    umbral_pre::bench::capsule_open_reencrypted(
                        &fx.u_capsule,
                        &fx.u_grantee,
                        &fx.u_owner_pk,
                        &fx.u_cfrags[..2],
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

    let fx = stream_fixture::stream();
    let aead = Aes256Gcm::new(&[7u8; 32].into());
    let nonce = Nonce::from([1u8; 12]);
    let mut buf = fx.data.clone();
    let mut segments = fx.segments();
    let mut record = fx.record_buf();

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
            fx.seal_open_in_place(&mut segments);
        }));
        best[2] = best[2].min(min_time(1, || {
            fx.encrypt_decrypt_record(&mut record);
        }));
        best[3] = best[3].min(min_time(1, || {
            fx.write_read_record(&mut record);
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

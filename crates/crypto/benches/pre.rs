//! PRE operations side by side with `umbral-pre` 0.11 (secp256k1) in the
//! same run. Each group has two functions: `sesphr-p256` and `umbral-k256`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_crypto as ours;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn pre(c: &mut Criterion) {
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
    let u_vcfrags: Vec<_> = u_kfrags
        .iter()
        .map(|k| umbral_pre::reencrypt_with_rng(&mut urng, &u_capsule, k.clone()))
        .collect();
    let u_cfrags: Vec<_> = u_vcfrags.iter().map(|c| c.clone().unverify()).collect();

    let mut g = c.benchmark_group("encapsulate");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| ours::encapsulate(&mut rng, black_box(&owner_pk)))
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| umbral_pre::bench::capsule_from_public_key(black_box(&u_owner_pk)))
    });
    g.finish();

    let mut g = c.benchmark_group("generate_kfrags_2_of_3");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| {
            ours::generate_kfrags(&mut rng, &owner, black_box(&grantee_pk), &signer, 2, 3).unwrap()
        })
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            umbral_pre::generate_kfrags_with_rng(
                &mut urng,
                &u_owner,
                black_box(&u_grantee_pk),
                &u_signer,
                2,
                3,
                true,
                true,
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("reencrypt");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| ours::reencrypt(&mut rng, black_box(&capsule), &kfrags[0]))
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            umbral_pre::reencrypt_with_rng(&mut urng, black_box(&u_capsule), u_kfrags[0].clone())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cfrag_verify");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| {
            black_box(cfrag)
                .verify(&capsule, &vk, &owner_pk, &grantee_pk)
                .unwrap()
        })
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            black_box(u_cfrags[0].clone())
                .verify(&u_capsule, &u_vk, &u_owner_pk, &u_grantee_pk)
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decapsulate_reencrypted_2");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| {
            ours::decapsulate_reencrypted(&grantee, &owner_pk, black_box(&capsule), &vcfrags[..2])
                .unwrap()
        })
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            umbral_pre::bench::capsule_open_reencrypted(
                black_box(&u_capsule),
                &u_grantee,
                &u_owner_pk,
                &u_cfrags[..2],
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = pre
}
criterion_main!(benches);

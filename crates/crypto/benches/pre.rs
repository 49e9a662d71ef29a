//! PRE operations side by side with `umbral-pre` 0.11 (secp256k1) in the
//! same run. Each group has two functions: `sesphr-p256` and `umbral-k256`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sesphr_crypto as ours;

#[path = "../tests/support/pre.rs"]
mod pre_fixture;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn pre(c: &mut Criterion) {
    let mut fx = pre_fixture::pre();

    let mut g = c.benchmark_group("encapsulate");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| ours::encapsulate(&mut fx.rng, black_box(&fx.owner_pk)))
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| umbral_pre::bench::capsule_from_public_key(black_box(&fx.u_owner_pk)))
    });
    g.finish();

    let mut g = c.benchmark_group("generate_kfrags_2_of_3");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| {
            ours::generate_kfrags(
                &mut fx.rng,
                &fx.owner,
                black_box(&fx.grantee_pk),
                &fx.signer,
                2,
                3,
            )
            .unwrap()
        })
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            umbral_pre::generate_kfrags_with_rng(
                &mut fx.urng,
                &fx.u_owner,
                black_box(&fx.u_grantee_pk),
                &fx.u_signer,
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
        b.iter(|| ours::reencrypt(&mut fx.rng, black_box(&fx.capsule), &fx.kfrags[0]))
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            umbral_pre::reencrypt_with_rng(
                &mut fx.urng,
                black_box(&fx.u_capsule),
                fx.u_kfrags[0].clone(),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cfrag_verify");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| {
            black_box(fx.cfrag)
                .verify(&fx.capsule, &fx.vk, &fx.owner_pk, &fx.grantee_pk)
                .unwrap()
        })
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            black_box(fx.u_cfrags[0].clone())
                .verify(&fx.u_capsule, &fx.u_vk, &fx.u_owner_pk, &fx.u_grantee_pk)
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decapsulate_reencrypted_2");
    g.bench_function("sesphr-p256", |b| {
        b.iter(|| {
            ours::decapsulate_reencrypted(
                &fx.grantee,
                &fx.owner_pk,
                black_box(&fx.capsule),
                &fx.vcfrags[..2],
            )
            .unwrap()
        })
    });
    g.bench_function("umbral-k256", |b| {
        b.iter(|| {
            umbral_pre::bench::capsule_open_reencrypted(
                black_box(&fx.u_capsule),
                &fx.u_grantee,
                &fx.u_owner_pk,
                &fx.u_cfrags[..2],
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

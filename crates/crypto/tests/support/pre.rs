//! The PRE fixture shared by `benches/pre.rs` and `tests/timing.rs`: one
//! owner, grantee and signer on each side (ours on P-256, `umbral-pre` on
//! secp256k1), a capsule, 2-of-3 kfrags and their cfrags. Both measure the
//! same operations, so they build the same inputs from the same seeds.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_crypto as ours;

pub struct Pre {
    pub rng: ChaCha20Rng,
    pub owner: ours::SecretKey,
    pub owner_pk: ours::PublicKey,
    pub grantee: ours::SecretKey,
    pub grantee_pk: ours::PublicKey,
    pub signer: ours::SigningKey,
    pub vk: ours::VerifyingKey,
    pub capsule: ours::Capsule,
    pub kfrags: Vec<ours::VerifiedKeyFrag>,
    pub vcfrags: Vec<ours::VerifiedCapsuleFrag>,
    pub cfrag: ours::CapsuleFrag,

    pub urng: rand_chacha_03::ChaCha20Rng,
    pub u_owner: umbral_pre::SecretKey,
    pub u_owner_pk: umbral_pre::PublicKey,
    pub u_grantee: umbral_pre::SecretKey,
    pub u_grantee_pk: umbral_pre::PublicKey,
    pub u_signer: umbral_pre::Signer,
    pub u_vk: umbral_pre::PublicKey,
    pub u_capsule: umbral_pre::Capsule,
    pub u_kfrags: Box<[umbral_pre::VerifiedKeyFrag]>,
    pub u_cfrags: Vec<umbral_pre::CapsuleFrag>,
}

/// Builds the fixture from fixed seeds (after [`ours::warm_up`], so that
/// table building is not measured).
pub fn pre() -> Pre {
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

    Pre {
        rng,
        owner,
        owner_pk,
        grantee,
        grantee_pk,
        signer,
        vk,
        capsule,
        kfrags,
        vcfrags,
        cfrag,
        urng,
        u_owner,
        u_owner_pk,
        u_grantee,
        u_grantee_pk,
        u_signer,
        u_vk,
        u_capsule,
        u_kfrags,
        u_cfrags,
    }
}

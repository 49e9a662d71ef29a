//! Property tests for the proxy re-encryption identities.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_crypto::{
    Capsule, CapsuleFrag, Error, KemKey, KeyFrag, MasterSecret, PublicKey, SecretKey, SigningKey,
    VerifiedCapsuleFrag, VerifiedKeyFrag, VerifyingKey, decapsulate_original,
    decapsulate_reencrypted, encapsulate, generate_kfrags, generate_node_kfrags, node_kfrag_id,
    reencrypt,
};

/// Everything one grant involves.
struct Setup {
    owner_sk: SecretKey,
    owner_pk: PublicKey,
    signer: SigningKey,
    vk: VerifyingKey,
    grantee_sk: SecretKey,
    grantee_pk: PublicKey,
    capsule: Capsule,
    key: KemKey,
    kfrags: Vec<VerifiedKeyFrag>,
    cfrags: Vec<VerifiedCapsuleFrag>,
}

fn setup(rng: &mut ChaCha20Rng, t: usize, n: usize) -> Setup {
    let owner_sk = SecretKey::generate(rng);
    let owner_pk = owner_sk.public_key();
    let signer = SigningKey::generate(rng);
    let vk = signer.verifying_key();
    let grantee_sk = SecretKey::generate(rng);
    let grantee_pk = grantee_sk.public_key();
    let (capsule, key) = encapsulate(rng, &owner_pk);
    let kfrags = generate_kfrags(rng, &owner_sk, &grantee_pk, &signer, t, n).unwrap();
    let cfrags = kfrags.iter().map(|k| reencrypt(rng, &capsule, k)).collect();
    Setup {
        owner_sk,
        owner_pk,
        signer,
        vk,
        grantee_sk,
        grantee_pk,
        capsule,
        key,
        kfrags,
        cfrags,
    }
}

/// Picks `k` distinct indices out of `0..n` (deterministic in `seed`).
fn subset(seed: u64, n: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = usize::try_from(s >> 33).unwrap() % (i + 1);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

fn t_n() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=10).prop_flat_map(|n| (1..=n, Just(n)))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(12))]

    #[test]
    fn threshold_round_trip((t, n) in t_n(), seed in any::<u64>(), pick in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s = setup(&mut rng, t, n);
        prop_assert_eq!(&decapsulate_original(&s.owner_sk, &s.capsule).unwrap(), &s.key);

        // Every cfrag survives encode -> decode -> verify.
        let verified: Vec<VerifiedCapsuleFrag> = s.cfrags.iter().map(|c| {
            CapsuleFrag::from_bytes(&c.to_bytes()).unwrap()
                .verify(&s.capsule, &s.vk, &s.owner_pk, &s.grantee_pk).unwrap()
        }).collect();

        // Any t-subset works, in any order; more than t works too.
        let chosen: Vec<_> = subset(pick, n, t).into_iter().map(|i| verified[i]).collect();
        let key = decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &chosen).unwrap();
        prop_assert_eq!(&key, &s.key);
        let all = decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &verified).unwrap();
        prop_assert_eq!(&all, &s.key);

        // t - 1 cfrags do not.
        if t > 1 {
            let fewer: Vec<_> = subset(pick ^ 1, n, t - 1).into_iter().map(|i| verified[i]).collect();
            prop_assert!(matches!(
                decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &fewer),
                Err(Error::DecryptionFailed)
            ));
        }
        // Nor a repeated cfrag standing in for a missing one.
        if t > 1 {
            let mut dup: Vec<_> = chosen[..t - 1].to_vec();
            dup.push(chosen[0]);
            prop_assert!(decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &dup).is_err());
        }
    }

    #[test]
    fn kfrags_verify_only_for_their_grant((t, n) in t_n(), seed in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s = setup(&mut rng, t, n);
        let other = SecretKey::generate(&mut rng).public_key();
        let other_vk = SigningKey::generate(&mut rng).verifying_key();
        for k in &s.kfrags {
            // The encoding holds the secret share: it comes zeroized on drop.
            let bytes: zeroize::Zeroizing<[u8; KeyFrag::LEN]> = k.to_bytes();
            let decoded = KeyFrag::from_bytes(&*bytes).unwrap();
            prop_assert_eq!(decoded.clone().verify(&s.vk, &s.owner_pk, &s.grantee_pk).unwrap(), k.clone());
            prop_assert!(decoded.clone().verify(&s.vk, &s.owner_pk, &other).is_err());
            prop_assert!(decoded.clone().verify(&s.vk, &other, &s.grantee_pk).is_err());
            prop_assert!(decoded.verify(&other_vk, &s.owner_pk, &s.grantee_pk).is_err());
        }
    }

    #[test]
    fn wrong_grantee_cannot_decapsulate(seed in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s = setup(&mut rng, 2, 3);
        let mallory = SecretKey::generate(&mut rng);
        // Cfrags do not verify for another grantee...
        for c in &s.cfrags {
            let raw = c.unverify();
            prop_assert!(raw.verify(&s.capsule, &s.vk, &s.owner_pk, &mallory.public_key()).is_err());
        }
        // ...and do not open with another key either.
        prop_assert!(decapsulate_reencrypted(&mallory, &s.owner_pk, &s.capsule, &s.cfrags).is_err());
        // Nor with the wrong owner key, nor for another capsule.
        let other_owner = SecretKey::generate(&mut rng).public_key();
        prop_assert!(decapsulate_reencrypted(&s.grantee_sk, &other_owner, &s.capsule, &s.cfrags).is_err());
        let (other_capsule, _) = encapsulate(&mut rng, &s.owner_pk);
        prop_assert!(decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &other_capsule, &s.cfrags).is_err());
        for c in &s.cfrags {
            prop_assert!(c.unverify().verify(&other_capsule, &s.vk, &s.owner_pk, &s.grantee_pk).is_err());
        }
        // And the owner's secret key alone does not open a re-encrypted capsule as grantee.
        prop_assert!(decapsulate_reencrypted(&s.owner_sk, &s.owner_pk, &s.capsule, &s.cfrags).is_err());
    }

    #[test]
    fn cfrags_of_different_grants_do_not_mix(seed in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s = setup(&mut rng, 2, 2);
        // A second kfrag set for the same owner and grantee.
        let kfrags2 = generate_kfrags(&mut rng, &s.owner_sk, &s.grantee_pk, &s.signer, 2, 2).unwrap();
        let c2 = reencrypt(&mut rng, &s.capsule, &kfrags2[1]);
        let mixed = [s.cfrags[0], c2];
        prop_assert!(decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &mixed).is_err());
    }

    #[test]
    fn tampered_capsule_is_rejected(seed in any::<u64>(), pos in 0usize..Capsule::LEN, bit in 0u8..8) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pk = SecretKey::generate(&mut rng).public_key();
        let (capsule, _) = encapsulate(&mut rng, &pk);
        let mut bytes = capsule.to_bytes();
        prop_assert_eq!(Capsule::from_bytes(&bytes).unwrap(), capsule);
        bytes[pos] ^= 1 << bit;
        prop_assert!(Capsule::from_bytes(&bytes).is_err());
    }

    #[test]
    fn tampered_kfrag_is_rejected(seed in any::<u64>(), pos in 0usize..KeyFrag::LEN, bit in 0u8..8) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s = setup(&mut rng, 2, 2);
        let mut bytes = s.kfrags[0].to_bytes();
        bytes[pos] ^= 1 << bit;
        let res = KeyFrag::from_bytes(&*bytes).and_then(|k| k.verify(&s.vk, &s.owner_pk, &s.grantee_pk));
        prop_assert!(res.is_err());
    }

    #[test]
    fn tampered_cfrag_is_rejected(seed in any::<u64>(), pos in 0usize..CapsuleFrag::LEN, bit in 0u8..8) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s = setup(&mut rng, 2, 2);
        let mut bytes = s.cfrags[0].to_bytes();
        bytes[pos] ^= 1 << bit;
        let res = CapsuleFrag::from_bytes(&bytes)
            .and_then(|c| c.verify(&s.capsule, &s.vk, &s.owner_pk, &s.grantee_pk));
        prop_assert!(res.is_err());
    }

    #[test]
    fn partition_keys_are_unrelated(seed in any::<u64>(), epoch in any::<u32>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let master = MasterSecret::generate(&mut rng);
        let restored = MasterSecret::from_bytes(&*master.to_bytes()).unwrap();
        let (sk, pk) = master.partition_keys("medical", epoch).unwrap();
        let (sk2, pk2) = restored.partition_keys("medical", epoch).unwrap();
        prop_assert_eq!(&sk, &sk2);
        prop_assert_eq!(pk, pk2);
        prop_assert_eq!(sk.public_key(), pk);
        let (_, other_partition) = master.partition_keys("insurance", epoch).unwrap();
        let (_, other_epoch) = master.partition_keys("medical", epoch.wrapping_add(1)).unwrap();
        let other_master = MasterSecret::generate(&mut rng);
        let (_, other_secret) = other_master.partition_keys("medical", epoch).unwrap();
        prop_assert_ne!(pk, other_partition);
        prop_assert_ne!(pk, other_epoch);
        prop_assert_ne!(pk, other_secret);
        prop_assert_eq!(master.signing_key().verifying_key(), restored.signing_key().verifying_key());
        prop_assert_ne!(master.signing_key().verifying_key(), other_master.signing_key().verifying_key());
    }
}

#[test]
fn partition_key_of_another_epoch_cannot_open() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let master = MasterSecret::generate(&mut rng);
    let (sk0, pk0) = master.partition_keys("medical", 0).unwrap();
    let (sk1, _) = master.partition_keys("medical", 1).unwrap();
    let (capsule, key) = encapsulate(&mut rng, &pk0);
    assert_eq!(decapsulate_original(&sk0, &capsule).unwrap(), key);
    assert_ne!(decapsulate_original(&sk1, &capsule).unwrap(), key);
}

#[test]
fn invalid_parameters_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let sk = SecretKey::generate(&mut rng);
    let pk = SecretKey::generate(&mut rng).public_key();
    let signer = SigningKey::generate(&mut rng);
    for (t, n) in [(0, 1), (2, 1), (1, 256), (0, 0)] {
        assert!(matches!(
            generate_kfrags(&mut rng, &sk, &pk, &signer, t, n),
            Err(Error::InvalidParameter(_))
        ));
    }
    assert_eq!(
        generate_kfrags(&mut rng, &sk, &pk, &signer, 1, 1)
            .unwrap()
            .len(),
        1
    );
    let master = MasterSecret::generate(&mut rng);
    assert!(master.partition_keys("", 0).is_err());
    assert!(master.partition_keys(&"x".repeat(256), 0).is_err());
    assert!(master.partition_keys(&"x".repeat(255), 0).is_ok());
    let (capsule, _) = encapsulate(&mut rng, &pk);
    assert!(matches!(
        decapsulate_reencrypted(&sk, &pk, &capsule, &[]),
        Err(Error::DecryptionFailed)
    ));
}

#[test]
fn threshold_one_works_with_a_single_cfrag() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let s = setup(&mut rng, 1, 3);
    for c in &s.cfrags {
        let key = decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &[*c]).unwrap();
        assert_eq!(key, s.key);
    }
    // All shares are equal when t = 1; passing all of them must still work.
    let key = decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &s.cfrags).unwrap();
    assert_eq!(key, s.key);
}

#[test]
fn secrets_are_redacted_in_debug() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let s = setup(&mut rng, 1, 1);
    let master = MasterSecret::generate(&mut rng);
    let sk_hex = hex::encode(*s.owner_sk.to_bytes());
    for text in [
        format!("{:?}", s.owner_sk),
        format!("{:?}", s.signer),
        format!("{:?}", s.key),
        format!("{:?}", master),
        format!("{:?}", s.kfrags[0]),
    ] {
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.contains(&sk_hex));
    }
    let rk_hex = hex::encode(&s.kfrags[0].to_bytes()[32..64]);
    assert!(!format!("{:?}", s.kfrags[0]).contains(&rk_hex));
    assert!(!format!("{:?}", master).contains(&hex::encode(*master.to_bytes())));
}

#[test]
fn key_encodings_round_trip() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let sk = SecretKey::generate(&mut rng);
    assert_eq!(SecretKey::from_bytes(&*sk.to_bytes()).unwrap(), sk);
    let pk = sk.public_key();
    assert_eq!(PublicKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
    let signer = SigningKey::generate(&mut rng);
    let restored = SigningKey::from_bytes(&*signer.to_bytes()).unwrap();
    assert_eq!(restored.verifying_key(), signer.verifying_key());
    let vk = signer.verifying_key();
    assert_eq!(VerifyingKey::from_bytes(&vk.to_bytes()).unwrap(), vk);
    let key = KemKey::from_bytes(&[7u8; 32]).unwrap();
    assert_eq!(KemKey::from_bytes(&*key.to_bytes()).unwrap(), key);
    assert!(KemKey::from_bytes(&[7u8; 31]).is_err());
}

/// Kfrags for independent nodes: share `i` carries the id node `i` can
/// recompute from the grant's context, the owner's signature covers it (so
/// it cannot be relabelled for another node), and any `t` of them work.
#[test]
fn node_kfrags_are_bound_to_their_node() {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let s = setup(&mut rng, 2, 3);
    let context = b"alice/medical/0/bob";
    let kfrags = generate_node_kfrags(
        &mut rng,
        &s.owner_sk,
        &s.grantee_pk,
        &s.signer,
        2,
        3,
        context,
    )
    .unwrap();
    for (i, k) in kfrags.iter().enumerate() {
        // Nodes are numbered from 1.
        let i = i as u32 + 1;
        assert_eq!(*k.id(), node_kfrag_id(context, i));
        for j in (0..=4).filter(|&j| j != i) {
            assert_ne!(
                *k.id(),
                node_kfrag_id(context, j),
                "node {j} refuses node {i}'s share"
            );
        }
        assert_ne!(*k.id(), node_kfrag_id(b"alice/medical/1/bob", i));
    }
    // Relabelling a share for another node breaks the owner's signature.
    let mut bytes = kfrags[0].to_bytes().to_vec();
    bytes[..32].copy_from_slice(&node_kfrag_id(context, 2));
    let relabelled = KeyFrag::from_bytes(&bytes).unwrap();
    assert!(
        relabelled
            .verify(&s.vk, &s.owner_pk, &s.grantee_pk)
            .is_err()
    );
    // Any two of the three re-encrypt; one does not.
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let cfrags: Vec<_> = pair
            .iter()
            .map(|&i| {
                let k = KeyFrag::from_bytes(&*kfrags[i].to_bytes())
                    .unwrap()
                    .verify(&s.vk, &s.owner_pk, &s.grantee_pk)
                    .unwrap();
                reencrypt(&mut rng, &s.capsule, &k)
            })
            .collect();
        let key = decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &cfrags).unwrap();
        assert_eq!(key.as_bytes(), s.key.as_bytes());
    }
    let one = [reencrypt(&mut rng, &s.capsule, &kfrags[2])];
    assert!(
        decapsulate_reencrypted(&s.grantee_sk, &s.owner_pk, &s.capsule, &one)
            .map(|k| k.as_bytes() != s.key.as_bytes())
            .unwrap_or(true)
    );
    // Same context, new grant: same ids, other shares.
    let again = generate_node_kfrags(
        &mut rng,
        &s.owner_sk,
        &s.grantee_pk,
        &s.signer,
        2,
        3,
        context,
    )
    .unwrap();
    assert_eq!(again[1].id(), kfrags[1].id());
    assert_ne!(again[1].to_bytes()[..], kfrags[1].to_bytes()[..]);
    assert!(
        generate_node_kfrags(
            &mut rng,
            &s.owner_sk,
            &s.grantee_pk,
            &s.signer,
            4,
            3,
            context
        )
        .is_err()
    );
}

/// The grant context is injective over its fields: moving a byte from one
/// field to the next changes it.
#[test]
fn grant_contexts_are_unambiguous() {
    let a = sesphr_crypto::grant_context("alice", "medical", 1, "bob");
    assert_ne!(
        a,
        sesphr_crypto::grant_context("alic", "emedical", 1, "bob")
    );
    assert_ne!(
        a,
        sesphr_crypto::grant_context("alice", "medical", 2, "bob")
    );
    assert_ne!(a, sesphr_crypto::grant_context("alice", "medical", 1, "bo"));
    assert_eq!(
        a,
        [
            &[0, 5][..],
            b"alice",
            &[0, 7],
            b"medical",
            &[0, 0, 0, 1],
            &[0, 3],
            b"bob"
        ]
        .concat()
    );
}

//! Merkle-tree proofs of ownership.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sesphr_dedup::Error;
use sesphr_dedup::pow::{
    self, Challenge, DEFAULT_CHALLENGE_LEAVES, LEAF_SIZE, MerkleBuilder, MerkleTree, Proof,
    ProofBuilder, leaf_count_for_len, leaf_hash, node_hash,
};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Straightforward level-by-level reference of the documented tree.
fn reference_root(blob: &[u8]) -> ([u8; 32], u64) {
    let mut level: Vec<[u8; 32]> = if blob.is_empty() {
        vec![leaf_hash(0, &[])]
    } else {
        blob.chunks(LEAF_SIZE)
            .enumerate()
            .map(|(i, c)| leaf_hash(i as u64, c))
            .collect()
    };
    let n = level.len() as u64;
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    node_hash(&p[0], &p[1])
                } else {
                    p[0]
                }
            })
            .collect();
    }
    (level[0], n)
}

fn challenge(seed: u64, leaf_count: u64, k: u32) -> Challenge {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Challenge::generate_with_k(&mut rng, leaf_count, k, 1000).unwrap()
}

#[test]
fn builder_matches_reference_for_every_small_shape() {
    for leaves in 1..=70usize {
        for tail in [0usize, 1, LEAF_SIZE - 1] {
            let len = if tail == 0 {
                leaves * LEAF_SIZE
            } else {
                (leaves - 1) * LEAF_SIZE + tail
            };
            let blob = data(len, leaves as u64);
            let (root, n) = reference_root(&blob);
            let tree = MerkleTree::from_bytes(&blob);
            assert_eq!((*tree.root(), tree.leaf_count()), (root, n), "len {len}");
            assert_eq!(n, leaf_count_for_len(len as u64));
        }
    }
    let (root, n) = reference_root(&[]);
    assert_eq!(n, 1);
    assert_eq!(*MerkleTree::from_bytes(&[]).root(), root);
    assert_eq!(root, leaf_hash(0, &[]));
}

#[test]
fn tree_of_three_leaves_is_as_documented() {
    let blob = data(2 * LEAF_SIZE + 1, 1);
    let l: Vec<_> = blob
        .chunks(LEAF_SIZE)
        .enumerate()
        .map(|(i, c)| leaf_hash(i as u64, c))
        .collect();
    let expected = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
    assert_eq!(*MerkleTree::from_bytes(&blob).root(), expected);
}

#[test]
fn proofs_verify_for_edge_sizes() {
    for len in [
        0,
        1,
        LEAF_SIZE - 1,
        LEAF_SIZE,
        LEAF_SIZE + 1,
        5 * LEAF_SIZE,
        97 * LEAF_SIZE + 3,
        300 * LEAF_SIZE,
    ] {
        let blob = data(len, len as u64);
        let tree = MerkleTree::from_bytes(&blob);
        let ch = challenge(len as u64, tree.leaf_count(), DEFAULT_CHALLENGE_LEAVES);
        assert_eq!(ch.indices().len() as u64, tree.leaf_count().min(97));
        let proof = pow::prove(&ch, &blob).unwrap();
        pow::verify(tree.root(), tree.leaf_count(), &ch, &proof).unwrap();
        let decoded = Proof::from_bytes(&proof.to_bytes()).unwrap();
        assert_eq!(decoded, proof);
        let ch2 = Challenge::from_bytes(&ch.to_bytes()).unwrap();
        assert_eq!(ch2, ch);
    }
}

#[test]
fn proof_builder_rejects_wrong_blob_length() {
    let blob = data(10 * LEAF_SIZE, 3);
    let ch = challenge(1, 10, 4);
    assert!(matches!(
        pow::prove(&ch, &blob[..9 * LEAF_SIZE]),
        Err(Error::InvalidParameter(_))
    ));
    assert!(matches!(
        pow::prove(&ch, &data(10 * LEAF_SIZE + 1, 3)),
        Err(Error::InvalidParameter(_))
    ));
    let mut b = ProofBuilder::new(&ch);
    b.update(&blob).unwrap();
    assert!(b.update(&[0]).is_err());
}

#[test]
fn tampering_fails() {
    let blob = data(37 * LEAF_SIZE + 100, 9);
    let tree = MerkleTree::from_bytes(&blob);
    let ch = challenge(2, tree.leaf_count(), 12);
    let good = pow::prove(&ch, &blob).unwrap();
    let v = |p: &Proof| pow::verify(tree.root(), tree.leaf_count(), &ch, p);
    v(&good).unwrap();

    for j in 0..good.leaves.len() {
        let mut p = good.clone();
        p.leaves[j].data[17] ^= 0x80;
        assert_eq!(v(&p), Err(Error::VerificationFailed), "leaf byte");

        let mut p = good.clone();
        p.leaves[j].path[0][0] ^= 1;
        assert_eq!(v(&p), Err(Error::VerificationFailed), "path hash");

        let mut p = good.clone();
        let last = p.leaves[j].path.len() - 1;
        p.leaves[j].path[last][31] ^= 1;
        assert_eq!(v(&p), Err(Error::VerificationFailed), "top of path");

        let mut p = good.clone();
        p.leaves[j].path.pop();
        assert_eq!(v(&p), Err(Error::VerificationFailed), "short path");

        let mut p = good.clone();
        p.leaves[j].path.push([0; 32]);
        assert_eq!(v(&p), Err(Error::VerificationFailed), "long path");

        let mut p = good.clone();
        p.leaves[j].index ^= 1;
        assert_eq!(v(&p), Err(Error::VerificationFailed), "index");

        let mut p = good.clone();
        p.leaves[j].data.pop();
        assert_eq!(v(&p), Err(Error::VerificationFailed), "short leaf");

        // Missing answer.
        let mut p = good.clone();
        p.leaves.remove(j);
        assert_eq!(v(&p), Err(Error::VerificationFailed), "missing");

        // Duplicated answer replacing another one.
        let mut p = good.clone();
        let other = (j + 1) % p.leaves.len();
        p.leaves[other] = p.leaves[j].clone();
        assert_eq!(v(&p), Err(Error::VerificationFailed), "duplicate");

        // Duplicated answer in addition.
        let mut p = good.clone();
        let dup = p.leaves[j].clone();
        p.leaves.insert(j, dup);
        assert_eq!(v(&p), Err(Error::VerificationFailed), "extra duplicate");
    }

    // Leaves answered in another order.
    let mut p = good.clone();
    p.leaves.swap(0, 1);
    assert_eq!(v(&p), Err(Error::VerificationFailed));

    // An unchallenged (but genuine) leaf instead of a challenged one.
    let other_ch = challenge(99, tree.leaf_count(), 37);
    let all = pow::prove(&other_ch, &blob).unwrap();
    let spare = all
        .leaves
        .iter()
        .find(|l| !ch.indices().contains(&l.index))
        .unwrap()
        .clone();
    let mut p = good.clone();
    p.leaves[0] = spare;
    assert_eq!(v(&p), Err(Error::VerificationFailed));

    // Another challenge's nonce, or a proof for another challenge.
    let mut p = good.clone();
    p.nonce[0] ^= 1;
    assert_eq!(v(&p), Err(Error::VerificationFailed));
    let ch3 = challenge(3, tree.leaf_count(), 12);
    assert_eq!(
        pow::verify(tree.root(), tree.leaf_count(), &ch3, &good),
        Err(Error::VerificationFailed)
    );

    // Another root or leaf count.
    let mut root = *tree.root();
    root[5] ^= 4;
    assert_eq!(
        pow::verify(&root, tree.leaf_count(), &ch, &good),
        Err(Error::VerificationFailed)
    );
    assert!(matches!(
        pow::verify(tree.root(), tree.leaf_count() + 1, &ch, &good),
        Err(Error::InvalidParameter(_))
    ));
}

#[test]
fn the_whole_blob_is_needed_when_it_is_small() {
    let blob = data(20 * LEAF_SIZE, 4);
    let tree = MerkleTree::from_bytes(&blob);
    let ch = challenge(4, tree.leaf_count(), DEFAULT_CHALLENGE_LEAVES);
    assert_eq!(ch.indices(), (0..20).collect::<Vec<_>>());
    let mut p = pow::prove(&ch, &blob).unwrap();
    p.leaves[19].data[0] ^= 1;
    assert!(pow::verify(tree.root(), 20, &ch, &p).is_err());
}

/// A prover holding every inner hash but only 70 % of the leaves (the rest
/// replaced by its best guess) must fail.
fn partial_prover_passes(blob: &[u8], missing: &BTreeSet<u64>, ch: &Challenge) -> bool {
    let tree = MerkleTree::from_bytes(blob);
    let mut proof = pow::prove(ch, blob).unwrap();
    for leaf in &mut proof.leaves {
        if missing.contains(&leaf.index) {
            leaf.data.iter_mut().for_each(|b| *b = 0);
        }
    }
    pow::verify(tree.root(), tree.leaf_count(), ch, &proof).is_ok()
}

#[test]
fn partial_holder_fails_with_overwhelming_probability() {
    let n = 400u64;
    let blob = data(n as usize * LEAF_SIZE, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut missing = BTreeSet::new();
    while missing.len() < (n as usize * 3) / 10 {
        missing.insert(rng.next_u64() % n);
    }
    // k = 97: passes with probability <= 0.7^97 ~ 2^-50.
    for _ in 0..40 {
        let ch = Challenge::generate(&mut rng, n, 0).unwrap();
        assert!(!partial_prover_passes(&blob, &missing, &ch));
    }
    // With a tiny k the bound f^k is visible and respected: k = 4 passes
    // with probability C(280,4)/C(400,4) ~ 0.239 <= 0.7^4 = 0.2401.
    let trials = 3000;
    let mut passes = 0;
    let tree = MerkleTree::from_bytes(&blob);
    let full = pow::prove(&Challenge::from_nonce([0; 32], n, 1024, 0).unwrap(), &blob).unwrap();
    for _ in 0..trials {
        let ch = Challenge::generate_with_k(&mut rng, n, 4, 0).unwrap();
        let leaves = ch
            .indices()
            .iter()
            .map(|&i| {
                let mut l = full.leaves[i as usize].clone();
                if missing.contains(&i) {
                    l.data.iter_mut().for_each(|b| *b = 0);
                }
                l
            })
            .collect();
        let proof = Proof {
            nonce: *ch.nonce(),
            leaves,
        };
        if pow::verify(tree.root(), n, &ch, &proof).is_ok() {
            passes += 1;
        }
    }
    let rate = f64::from(passes) / f64::from(trials);
    assert!((0.19..0.29).contains(&rate), "pass rate {rate}");
}

#[test]
fn challenge_indices_are_distinct_sorted_in_range_and_spread() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let n = 1000u64;
    let mut hits = vec![0u32; n as usize];
    for _ in 0..300 {
        let ch = Challenge::generate(&mut rng, n, 0).unwrap();
        let idx = ch.indices();
        assert_eq!(idx.len(), 97);
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
        assert!(idx.iter().all(|&i| i < n));
        for &i in idx {
            hits[i as usize] += 1;
        }
    }
    // Expected 29.1 hits per index; every index is hit, none absurdly often.
    assert!(hits.iter().all(|&h| (5..70).contains(&h)), "{hits:?}");
    // Deterministic in the nonce.
    let a = Challenge::from_nonce([1; 32], n, 97, 0).unwrap();
    let b = Challenge::from_nonce([1; 32], n, 97, 5).unwrap();
    assert_eq!(a.indices(), b.indices());
    assert_ne!(
        a.indices(),
        Challenge::from_nonce([2; 32], n, 97, 0).unwrap().indices()
    );
    // Huge blobs and k = n - 1.
    let big = Challenge::from_nonce([3; 32], u64::MAX, 1024, 0).unwrap();
    assert_eq!(big.indices().len(), 1024);
    let almost = Challenge::from_nonce([3; 32], 98, 97, 0).unwrap();
    assert_eq!(almost.indices().len(), 97);
    assert!(Challenge::from_nonce([0; 32], 0, 97, 0).is_err());
    assert!(Challenge::from_nonce([0; 32], 10, 0, 0).is_err());
    assert!(Challenge::from_nonce([0; 32], 10, 1025, 0).is_err());
}

#[test]
fn expiry() {
    let ch = Challenge::from_nonce([0; 32], 10, 3, 1000).unwrap();
    assert!(!ch.is_expired(1000, 300));
    assert!(!ch.is_expired(1299, 300));
    assert!(ch.is_expired(1300, 300));
    assert!(ch.is_expired(999, 300));
    assert!(ch.is_expired(1000, 0));
}

#[test]
fn decoders_are_strict() {
    let ch = Challenge::from_nonce([7; 32], 500, 97, 42).unwrap();
    let bytes = ch.to_bytes();
    assert_eq!(bytes.len(), 4 + 1 + 32 + 8 + 8 + 4 + 8 * 97);
    for cut in 0..bytes.len() {
        assert!(Challenge::from_bytes(&bytes[..cut]).is_err());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Challenge::from_bytes(&longer).is_err());
    // Indices not derived from the nonce are rejected.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(Challenge::from_bytes(&bad).is_err());
    let mut bad = bytes.clone();
    bad[10] ^= 1; // nonce
    assert!(Challenge::from_bytes(&bad).is_err());

    let blob = data(3 * LEAF_SIZE, 1);
    let ch = Challenge::from_nonce([7; 32], 3, 2, 0).unwrap();
    let proof = pow::prove(&ch, &blob).unwrap().to_bytes();
    for cut in 0..proof.len() {
        assert!(Proof::from_bytes(&proof[..cut]).is_err());
    }
    let mut longer = proof.clone();
    longer.push(0);
    assert!(Proof::from_bytes(&longer).is_err());
}

#[test]
fn streaming_matches_in_any_chunking() {
    let blob = data(13 * LEAF_SIZE + 5, 2);
    let tree = MerkleTree::from_bytes(&blob);
    let ch = challenge(5, tree.leaf_count(), 6);
    let expected = pow::prove(&ch, &blob).unwrap();
    for chunk in [1, 3, LEAF_SIZE - 1, LEAF_SIZE, LEAF_SIZE + 1, 10_000] {
        let mut m = MerkleBuilder::new();
        let mut p = ProofBuilder::new(&ch);
        for c in blob.chunks(chunk) {
            m.update(c);
            p.update(c).unwrap();
        }
        assert_eq!(m.finish(), tree);
        assert_eq!(p.finish().unwrap(), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_proofs_verify(len in 0usize..(80 * LEAF_SIZE), k in 1u32..120, seed in any::<u64>()) {
        let blob = data(len, seed);
        let tree = MerkleTree::from_bytes(&blob);
        prop_assert_eq!((*tree.root(), tree.leaf_count()), reference_root(&blob));
        let ch = challenge(seed, tree.leaf_count(), k);
        let proof = pow::prove(&ch, &blob).unwrap();
        prop_assert!(pow::verify(tree.root(), tree.leaf_count(), &ch, &proof).is_ok());
        let proof = Proof::from_bytes(&proof.to_bytes()).unwrap();
        let ch = Challenge::from_bytes(&ch.to_bytes()).unwrap();
        prop_assert!(pow::verify(tree.root(), tree.leaf_count(), &ch, &proof).is_ok());
    }

    #[test]
    fn random_bytes_never_decode(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        prop_assert!(Challenge::from_bytes(&bytes).is_err());
        prop_assert!(Proof::from_bytes(&bytes).is_err());
    }

    #[test]
    fn random_bytes_after_valid_magic_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..600),
        which in any::<bool>(),
    ) {
        let mut bytes = if which { b"SPHC\x01".to_vec() } else { b"SPHP\x01".to_vec() };
        bytes.extend_from_slice(&tail);
        // Only must not panic; a decoded value re-encodes to the same bytes.
        if let Ok(c) = Challenge::from_bytes(&bytes) {
            prop_assert_eq!(c.to_bytes(), bytes.clone());
        }
        if let Ok(p) = Proof::from_bytes(&bytes) {
            prop_assert_eq!(p.to_bytes(), bytes);
        }
    }

    #[test]
    fn mutated_proofs_fail(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let blob = data(9 * LEAF_SIZE + 77, 12);
        let tree = MerkleTree::from_bytes(&blob);
        let ch = challenge(12, tree.leaf_count(), 4);
        let mut bytes = pow::prove(&ch, &blob).unwrap().to_bytes();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(p) = Proof::from_bytes(&bytes) {
            prop_assert!(pow::verify(tree.root(), tree.leaf_count(), &ch, &p).is_err());
        }
    }
}

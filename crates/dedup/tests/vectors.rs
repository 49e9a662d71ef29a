//! Deterministic end-to-end test vectors, also published in `README.md`
//! (this test fails if the README drifts from the code).

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_dedup::{convergent, oprf, pow, threshold};

const README: &str = include_str!("../README.md");

fn p2() -> Vec<u8> {
    (0..2 * 4096 + 100).map(|i| (i % 251) as u8).collect()
}

fn nonce() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

struct Computed(Vec<(&'static str, String)>);

impl Computed {
    fn add(&mut self, name: &'static str, bytes: impl AsRef<[u8]>) {
        self.0.push((name, hex::encode(bytes)));
    }
}

fn compute() -> Computed {
    let mut c = Computed(Vec::new());
    let key = oprf::ServerKey::derive(&[0xa3; 32], b"SeSPHR dedup test").unwrap();
    c.add("skS", *key.to_bytes());

    // P1: one default-size segment.
    let p1 = b"hello, SeSPHR";
    let input = convergent::content_digest(p1);
    c.add("P1 oprf_input", input);
    let blind = [0x11u8; 32];
    let (state, blinded) = oprf::blind_with_scalar(&blind, &input).unwrap();
    c.add("P1 blinded", blinded);
    let evaluated = oprf::blind_evaluate(&key, &blinded).unwrap();
    c.add("P1 evaluated", evaluated);
    let output = oprf::finalize(state, &input, &evaluated).unwrap();
    assert_eq!(output, oprf::evaluate(&key, &input).unwrap());
    c.add("P1 oprf_output", output);
    let ck = convergent::content_key(&output);
    c.add("P1 content_key", *ck.to_bytes());
    let blob = convergent::seal_blob(&ck, p1);
    c.add("P1 blob", &blob);
    c.add("P1 blob_id", convergent::blob_id(&blob));

    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let wrapped = convergent::wrap_content_key(&mut rng, &[0x42; 32], &ck, b"record-1");
    assert_eq!(
        convergent::unwrap_content_key(&[0x42; 32], &wrapped, b"record-1").unwrap(),
        ck
    );
    c.add("P1 wrapped", wrapped);

    // P2: 4096-byte segments, three Merkle leaves.
    let p2 = p2();
    let output = oprf::evaluate(&key, &convergent::content_digest(&p2)).unwrap();
    let ck = convergent::content_key(&output);
    c.add("P2 content_key", *ck.to_bytes());
    let blob = convergent::seal_blob_with_segment_size(&ck, &p2, 4096).unwrap();
    assert_eq!(blob.len(), 8349);
    c.add("P2 blob_id", convergent::blob_id(&blob));
    c.add("P2 blob[9..41]", &blob[9..41]);
    c.add("P2 blob[-16..]", &blob[blob.len() - 16..]);
    let leaves: Vec<_> = blob
        .chunks(pow::LEAF_SIZE)
        .enumerate()
        .map(|(i, l)| pow::leaf_hash(i as u64, l))
        .collect();
    c.add("P2 L0", leaves[0]);
    c.add("P2 L1", leaves[1]);
    c.add("P2 L2", leaves[2]);
    let tree = pow::MerkleTree::from_bytes(&blob);
    assert_eq!(tree.leaf_count(), 3);
    assert_eq!(
        *tree.root(),
        pow::node_hash(&pow::node_hash(&leaves[0], &leaves[1]), &leaves[2])
    );
    c.add("P2 root", tree.root());

    let ch = pow::Challenge::from_nonce(nonce(), 1000, 5, 1_700_000_000).unwrap();
    c.add("challenge(n=1000,k=5)", ch.to_bytes());
    let ch = pow::Challenge::from_nonce(nonce(), 3, 2, 1_700_000_000).unwrap();
    c.add("P2 challenge", ch.to_bytes());
    let proof = pow::prove(&ch, &blob).unwrap();
    pow::verify(tree.root(), 3, &ch, &proof).unwrap();
    assert_eq!(ch.indices(), [0, 2]);
    assert_eq!(proof.leaves[0].path, [leaves[1], leaves[2]]);
    assert_eq!(
        proof.leaves[1].path,
        [pow::node_hash(&leaves[0], &leaves[1])]
    );
    c.add("P2 proof sha256", convergent::blob_id(&proof.to_bytes()));

    // Threshold OPRF: skS shared 2-of-3, node i answers P1's blinded
    // element with proof nonce (0x30 + i) x 32.
    let shares = threshold::deal_with_coefficients(&key, &[[0x22; 32]], 3).unwrap();
    let (_, blinded) = oprf::blind_with_scalar(&blind, &input).unwrap();
    let mut evaluations = Vec::new();
    let names = [
        ["T1 share", "T1 public_share", "T1 evaluation"],
        ["T2 share", "T2 public_share", "T2 evaluation"],
        ["T3 share", "T3 public_share", "T3 evaluation"],
    ];
    for (share, [s, k, e]) in shares.iter().zip(names) {
        let nonce = [0x30 + share.index(); 32];
        let evaluation = threshold::evaluate_share_with_nonce(share, &blinded, &nonce).unwrap();
        let public_share = share.public_share();
        threshold::verify_share(share.index(), &public_share, &blinded, &evaluation).unwrap();
        c.add(s, *share.to_bytes());
        c.add(k, public_share);
        c.add(e, evaluation.to_bytes());
        evaluations.push(evaluation);
    }
    let [e1, e2, e3] = [evaluations[0], evaluations[1], evaluations[2]];
    let combined = threshold::combine(2, &[e3, e1]).unwrap();
    for pair in [[e1, e2], [e2, e3], [e1, e3]] {
        assert_eq!(threshold::combine(2, &pair).unwrap(), combined);
    }
    // The same element, and so the same output and content key, as the
    // unshared key gives for P1.
    assert_eq!(combined, evaluated);
    let (state, _) = oprf::blind_with_scalar(&blind, &input).unwrap();
    let output = oprf::finalize(state, &input, &combined).unwrap();
    assert_eq!(output, oprf::evaluate(&key, &input).unwrap());
    c.add("T combined", combined);
    c.add("T oprf_output", output);
    c
}

#[test]
fn readme_vectors_match_the_code() {
    let computed = compute();
    let mut missing = Vec::new();
    for (name, hex) in &computed.0 {
        // Long values are wrapped in the README; compare without whitespace.
        let flat: String = README.split_whitespace().collect();
        if !flat.contains(hex.as_str()) {
            missing.push(format!("{name} = {hex}"));
        }
    }
    assert!(
        missing.is_empty(),
        "README.md lacks:\n{}",
        missing.join("\n")
    );
}

#[test]
fn challenge_vector_indices() {
    let ch = pow::Challenge::from_nonce(nonce(), 1000, 5, 0).unwrap();
    let listed = format!("{:?}", ch.indices());
    assert!(README.contains(&listed), "README.md lacks indices {listed}");
    let ch = pow::Challenge::from_nonce(nonce(), 3, 2, 0).unwrap();
    let listed = format!("{:?}", ch.indices());
    assert!(README.contains(&listed), "README.md lacks indices {listed}");
}

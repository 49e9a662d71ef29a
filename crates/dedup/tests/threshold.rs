//! Threshold OPRF: any t shares give the unshared key's output, fewer do
//! not, and a node's answer verifies only as its own.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_dedup::Error;
use sesphr_dedup::oprf::{self, ServerKey};
use sesphr_dedup::threshold::{self, KeyShare, MAX_SHARES, ShareEvaluation};

const INPUT: &[u8] = b"SHA-256 of a guessable consent form";

fn key() -> ServerKey {
    ServerKey::derive(&[0x5c; 32], b"threshold test").unwrap()
}

/// Every subset of `0..n` with `k` elements, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..1 << n)
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

fn invalid_parameter(r: Result<impl core::fmt::Debug, Error>, needle: &str) {
    match r {
        Err(Error::InvalidParameter(msg)) => assert!(msg.contains(needle), "{msg:?}"),
        other => panic!("expected InvalidParameter({needle:?}), got {other:?}"),
    }
}

#[test]
fn every_threshold_subset_gives_the_unshared_output() {
    let key = key();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for (t, n) in [(1u8, 1u8), (2, 3), (3, 5)] {
        let shares = threshold::deal(&mut rng, &key, t, n).unwrap();
        assert_eq!(shares.len(), usize::from(n));
        let publics: Vec<_> = shares
            .iter()
            .map(|s| (s.index(), s.public_share()))
            .collect();
        for (i, share) in shares.iter().enumerate() {
            assert_eq!(usize::from(share.index()), i + 1);
        }
        let (_, blinded) = oprf::blind(&mut rng, INPUT).unwrap();
        let evaluations: Vec<ShareEvaluation> = shares
            .iter()
            .map(|s| threshold::evaluate_share(&mut rng, s, &blinded).unwrap())
            .collect();
        for (e, (i, k)) in evaluations.iter().zip(&publics) {
            threshold::verify_share(*i, k, &blinded, e).unwrap();
        }
        let want = oprf::blind_evaluate(&key, &blinded).unwrap();
        for subset in subsets(usize::from(n), usize::from(t)) {
            // Also in reverse order: Lagrange coefficients do not care.
            for order in [subset.clone(), subset.iter().rev().copied().collect()] {
                let chosen: Vec<_> = order.iter().map(|&i| evaluations[i]).collect();
                assert_eq!(threshold::combine(t, &chosen).unwrap(), want, "{order:?}");
                let chosen: Vec<_> = order.iter().map(|&i| publics[i]).collect();
                assert_eq!(
                    threshold::combine_public_shares(t, &chosen).unwrap(),
                    key.public_key()
                );
            }
        }
        // Combining all n uses the first t only; the client's finalize
        // gives the direct PRF output.
        let (state, blinded) = oprf::blind(&mut rng, INPUT).unwrap();
        let evaluations: Vec<_> = shares
            .iter()
            .map(|s| threshold::evaluate_share(&mut rng, s, &blinded).unwrap())
            .collect();
        let combined = threshold::combine(t, &evaluations).unwrap();
        assert_eq!(
            oprf::finalize(state, INPUT, &combined).unwrap(),
            oprf::evaluate(&key, INPUT).unwrap()
        );
    }
}

#[test]
fn fewer_than_threshold_shares_do_not_give_the_key() {
    let key = key();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for (t, n) in [(2u8, 3u8), (3, 5)] {
        let shares = threshold::deal(&mut rng, &key, t, n).unwrap();
        let (_, blinded) = oprf::blind(&mut rng, INPUT).unwrap();
        let want = oprf::blind_evaluate(&key, &blinded).unwrap();
        let evaluations: Vec<_> = shares
            .iter()
            .map(|s| threshold::evaluate_share(&mut rng, s, &blinded).unwrap())
            .collect();
        for subset in subsets(usize::from(n), usize::from(t - 1)) {
            let chosen: Vec<_> = subset.iter().map(|&i| evaluations[i]).collect();
            assert_ne!(threshold::combine(t - 1, &chosen).unwrap(), want);
            // Nor is a single share's own evaluation k * B.
            assert_ne!(*chosen[0].evaluated(), want);
        }
        // And t - 1 answers are refused at threshold t.
        invalid_parameter(
            threshold::combine(t, &evaluations[..usize::from(t) - 1]),
            "fewer",
        );
    }
}

#[test]
fn a_one_of_one_share_is_the_key() {
    let key = key();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for n in [1u8, 3, MAX_SHARES] {
        let shares = threshold::deal(&mut rng, &key, 1, n).unwrap();
        for s in &shares {
            assert_eq!(s.to_bytes()[1..], key.to_bytes()[..]);
            assert_eq!(s.public_share(), key.public_key());
        }
    }
    let share = &threshold::deal(&mut rng, &key, 1, 1).unwrap()[0];
    assert_eq!(share.index(), 1);
    assert_eq!(
        hex::encode(*share.to_bytes()),
        format!("01{}", hex::encode(*key.to_bytes()))
    );
    // Its evaluation is exactly today's single-server evaluation.
    let (_, blinded) = oprf::blind(&mut rng, INPUT).unwrap();
    let e = threshold::evaluate_share(&mut rng, share, &blinded).unwrap();
    assert_eq!(
        *e.evaluated(),
        oprf::blind_evaluate(&key, &blinded).unwrap()
    );
    assert_eq!(threshold::combine(1, &[e]).unwrap(), *e.evaluated());
}

#[test]
fn dealing_parameters_are_checked() {
    let key = key();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    invalid_parameter(threshold::deal(&mut rng, &key, 0, 3), "at least 1");
    invalid_parameter(threshold::deal(&mut rng, &key, 0, 0), "at least 1");
    invalid_parameter(threshold::deal(&mut rng, &key, 4, 3), "exceed");
    invalid_parameter(threshold::deal(&mut rng, &key, 1, 0), "exceed");
    invalid_parameter(
        threshold::deal(&mut rng, &key, 2, MAX_SHARES + 1),
        "at most 16",
    );
    assert_eq!(
        threshold::deal(&mut rng, &key, MAX_SHARES, MAX_SHARES)
            .unwrap()
            .len(),
        16
    );
    let a = [[7u8; 32]; 15];
    invalid_parameter(threshold::deal_with_coefficients(&key, &a, 15), "exceed");
    invalid_parameter(
        threshold::deal_with_coefficients(&key, &[[7u8; 32]; 16], 16),
        "exceed",
    );
    assert!(matches!(
        threshold::deal_with_coefficients(&key, &[[0u8; 32]], 2),
        Err(Error::Malformed(_))
    ));
    // A coefficient making f(1) = k + a_1 = 0 gives node 1 no share.
    let minus_k = {
        let n = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
            .unwrap();
        let k = key.to_bytes();
        // n - k, big-endian subtraction.
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(k[i]) - borrow;
            borrow = i16::from(d < 0);
            out[i] = (d + 256 * borrow) as u8;
        }
        out
    };
    invalid_parameter(
        threshold::deal_with_coefficients(&key, &[minus_k], 2),
        "zero share",
    );
}

#[test]
fn dealings_are_random() {
    let key = key();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let a = threshold::deal(&mut rng, &key, 2, 3).unwrap();
    let b = threshold::deal(&mut rng, &key, 2, 3).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_ne!(x.to_bytes(), y.to_bytes());
    }
    // Shares of one dealing differ from each other and from the key.
    assert_ne!(a[0].to_bytes()[1..], a[1].to_bytes()[1..]);
    assert_ne!(a[0].to_bytes()[1..], key.to_bytes()[..]);
}

struct Setup {
    shares: Vec<KeyShare>,
    blinded: [u8; 33],
    evaluations: Vec<ShareEvaluation>,
}

fn setup() -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let shares = threshold::deal(&mut rng, &key(), 2, 3).unwrap();
    let (_, blinded) = oprf::blind(&mut rng, INPUT).unwrap();
    let evaluations = shares
        .iter()
        .map(|s| threshold::evaluate_share(&mut rng, s, &blinded).unwrap())
        .collect();
    Setup {
        shares,
        blinded,
        evaluations,
    }
}

fn refused(r: Result<(), Error>) {
    assert_eq!(r, Err(Error::ShareVerificationFailed));
}

#[test]
fn a_tampered_element_or_proof_is_refused() {
    let s = setup();
    let e = s.evaluations[0];
    let k = s.shares[0].public_share();
    threshold::verify_share(1, &k, &s.blinded, &e).unwrap();
    // Another node's (valid) element under this node's proof.
    let swapped = ShareEvaluation::from_parts(1, s.evaluations[1].evaluated(), e.proof()).unwrap();
    refused(threshold::verify_share(1, &k, &s.blinded, &swapped));
    // The blinded element echoed back, or k * B (the whole key's answer).
    let echoed = ShareEvaluation::from_parts(1, &s.blinded, e.proof()).unwrap();
    refused(threshold::verify_share(1, &k, &s.blinded, &echoed));
    // Every bit of the proof matters.
    let bytes = e.to_bytes();
    for bit in (1 + 33) * 8..bytes.len() * 8 {
        let mut t = bytes;
        t[bit / 8] ^= 1 << (bit % 8);
        // Some flips make a scalar non-canonical: refused at decoding.
        if let Ok(t) = ShareEvaluation::from_bytes(&t) {
            refused(threshold::verify_share(1, &k, &s.blinded, &t));
        }
    }
    // And of the element, whenever it still decodes.
    for bit in 8..(1 + 33) * 8 {
        let mut t = bytes;
        t[bit / 8] ^= 1 << (bit % 8);
        if let Ok(t) = ShareEvaluation::from_bytes(&t) {
            refused(threshold::verify_share(1, &k, &s.blinded, &t));
        }
    }
    // Answering another blinded element.
    let (_, other) = oprf::blind(&mut ChaCha20Rng::seed_from_u64(7), b"other").unwrap();
    refused(threshold::verify_share(1, &k, &other, &e));
}

#[test]
fn a_proof_verifies_only_for_its_own_node() {
    let s = setup();
    let e = s.evaluations[0];
    let k1 = s.shares[0].public_share();
    let k2 = s.shares[1].public_share();
    // Under another node's public share.
    refused(threshold::verify_share(1, &k2, &s.blinded, &e));
    refused(threshold::verify_share(2, &k2, &s.blinded, &e));
    // Relabelled as another node, with the right or the other public share.
    let relabelled = ShareEvaluation::from_parts(2, e.evaluated(), e.proof()).unwrap();
    refused(threshold::verify_share(2, &k1, &s.blinded, &relabelled));
    refused(threshold::verify_share(2, &k2, &s.blinded, &relabelled));
    refused(threshold::verify_share(1, &k1, &s.blinded, &relabelled));
    // Node 1's honest answer checked as if from node 1 but expected index 2.
    refused(threshold::verify_share(2, &k1, &s.blinded, &e));
    // Under the whole key's public key.
    refused(threshold::verify_share(
        1,
        &key().public_key(),
        &s.blinded,
        &e,
    ));
}

#[test]
fn malformed_points_are_rejected_by_verify() {
    let s = setup();
    let e = s.evaluations[0];
    let k = s.shares[0].public_share();
    let mut bad = k;
    bad[0] = 0x04;
    for junk in [&bad[..], &[0u8; 33], &[], &k[..32], &[0xff; 33]] {
        assert!(matches!(
            threshold::verify_share(1, junk, &s.blinded, &e),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            threshold::verify_share(1, &k, junk, &e),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            threshold::evaluate_share(&mut ChaCha20Rng::seed_from_u64(0), &s.shares[0], junk),
            Err(Error::Malformed(_))
        ));
    }
}

#[test]
fn combine_checks_its_inputs() {
    let s = setup();
    let e = &s.evaluations;
    invalid_parameter(threshold::combine(0, e), "between 1 and 16");
    invalid_parameter(threshold::combine(MAX_SHARES + 1, e), "between 1 and 16");
    invalid_parameter(threshold::combine(2, &e[..1]), "fewer");
    invalid_parameter(threshold::combine(1, &[]), "fewer");
    invalid_parameter(threshold::combine(2, &[e[0], e[0]]), "distinct");
    // Duplicates are refused even beyond the first `threshold`.
    invalid_parameter(threshold::combine(2, &[e[0], e[1], e[0]]), "distinct");
    let dup = ShareEvaluation::from_parts(1, e[1].evaluated(), e[1].proof()).unwrap();
    invalid_parameter(threshold::combine(2, &[e[0], dup]), "distinct");
    let p = |s: &KeyShare| (s.index(), s.public_share());
    let pubs = [p(&s.shares[0]), p(&s.shares[1])];
    invalid_parameter(
        threshold::combine_public_shares(2, &[(0, pubs[0].1), pubs[1]]),
        "share index",
    );
    invalid_parameter(
        threshold::combine_public_shares(2, &[pubs[0], (17, pubs[1].1)]),
        "share index",
    );
    let mut bad = pubs;
    bad[1].1[0] = 0x04;
    assert!(matches!(
        threshold::combine_public_shares(2, &bad),
        Err(Error::Malformed(_))
    ));
    threshold::combine_public_shares(2, &pubs).unwrap();
}

#[test]
fn key_share_encodings_round_trip() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let shares = threshold::deal(&mut rng, &key(), 3, MAX_SHARES).unwrap();
    for s in &shares {
        let bytes = s.to_bytes();
        assert_eq!(bytes[0], s.index());
        let again = KeyShare::from_bytes(&*bytes).unwrap();
        assert_eq!(again.to_bytes(), bytes);
        assert_eq!(again.index(), s.index());
        assert_eq!(again.public_share(), s.public_share());
        let text = s.to_hex();
        assert_eq!(text.as_str(), hex::encode(*bytes));
        assert_eq!(KeyShare::from_hex(&text).unwrap().to_bytes(), bytes);
        // A key file: trailing newline, surrounding spaces, upper case.
        let file = format!("  {}\n", text.to_uppercase());
        assert_eq!(KeyShare::from_hex(&file).unwrap().to_bytes(), bytes);
    }
}

#[test]
fn key_share_decoding_rejects_bad_input() {
    let share = &threshold::deal(&mut ChaCha20Rng::seed_from_u64(9), &key(), 2, 2).unwrap()[0];
    let good = *share.to_bytes();
    let bad = |b: &[u8]| matches!(KeyShare::from_bytes(b), Err(Error::Malformed(_)));
    assert!(bad(&[]));
    assert!(bad(&good[..32]));
    assert!(bad(&[&good[..], &[0]].concat()));
    for index in [0u8, MAX_SHARES + 1, 0xff] {
        let mut b = good;
        b[0] = index;
        assert!(bad(&b), "index {index}");
    }
    let mut b = good;
    b[0] = MAX_SHARES;
    assert!(!bad(&b));
    // Zero, n, and all-ones scalars.
    let n =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    for scalar in [vec![0u8; 32], n, vec![0xff; 32]] {
        assert!(bad(&[&[1u8][..], &scalar].concat()));
    }
    let text = share.to_hex();
    let hex_bad = |t: &str| matches!(KeyShare::from_hex(t), Err(Error::Malformed(_)));
    assert!(hex_bad(""));
    assert!(hex_bad(&text[..64]));
    assert!(hex_bad(&format!("{}0", text.as_str())));
    assert!(hex_bad(&format!("0x{}", &text[2..])));
    assert!(hex_bad(&format!("{} ", &text[..65])));
    assert!(hex_bad(&text.replace(&text[10..11], "g")));
    assert!(hex_bad(&format!("{}é", &text[..64])));
    assert!(hex_bad(&format!("00{}", &text[2..])));
}

#[test]
fn share_evaluation_encodings() {
    let s = setup();
    let e = s.evaluations[2];
    let bytes = e.to_bytes();
    assert_eq!(bytes.len(), threshold::SHARE_EVALUATION_LEN);
    assert_eq!(bytes[0], 3);
    assert_eq!(&bytes[1..34], e.evaluated());
    assert_eq!(&bytes[34..], e.proof());
    assert_eq!(ShareEvaluation::from_bytes(&bytes).unwrap(), e);
    assert_eq!(
        ShareEvaluation::from_parts(e.index(), e.evaluated(), e.proof()).unwrap(),
        e
    );
    let bad = |b: &[u8]| matches!(ShareEvaluation::from_bytes(b), Err(Error::Malformed(_)));
    assert!(bad(&bytes[..97]));
    assert!(bad(&[&bytes[..], &[0]].concat()));
    for index in [0u8, MAX_SHARES + 1] {
        let mut b = bytes;
        b[0] = index;
        assert!(bad(&b));
    }
    let mut b = bytes;
    b[1] = 0x04;
    assert!(bad(&b));
    let mut b = bytes;
    b[34..66].fill(0xff); // c >= n
    assert!(bad(&b));
    let mut b = bytes;
    b[66..].fill(0xff); // s >= n
    assert!(bad(&b));
    let from_parts = |i, z: &[u8], p: &[u8]| ShareEvaluation::from_parts(i, z, p).is_err();
    assert!(from_parts(0, e.evaluated(), e.proof()));
    assert!(from_parts(3, &e.evaluated()[..32], e.proof()));
    assert!(from_parts(3, e.evaluated(), &e.proof()[..63]));
    assert!(from_parts(3, &[0u8; 33], e.proof()));
}

#[test]
fn proofs_are_randomised_and_nonces_are_checked() {
    let s = setup();
    let share = &s.shares[0];
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let a = threshold::evaluate_share(&mut rng, share, &s.blinded).unwrap();
    let b = threshold::evaluate_share(&mut rng, share, &s.blinded).unwrap();
    assert_eq!(a.evaluated(), b.evaluated());
    assert_ne!(a.proof(), b.proof());
    let c = threshold::evaluate_share_with_nonce(share, &s.blinded, &[0x33; 32]).unwrap();
    threshold::verify_share(1, &share.public_share(), &s.blinded, &c).unwrap();
    assert_eq!(
        c,
        threshold::evaluate_share_with_nonce(share, &s.blinded, &[0x33; 32]).unwrap()
    );
    assert!(matches!(
        threshold::evaluate_share_with_nonce(share, &s.blinded, &[0; 32]),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        threshold::evaluate_share_with_nonce(share, &s.blinded, &[0xff; 32]),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn errors_read_well() {
    assert_eq!(
        Error::ShareVerificationFailed.to_string(),
        "threshold OPRF share evaluation failed verification"
    );
    let e = threshold::combine(2, &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid parameter: fewer share evaluations than the threshold"
    );
    let e = KeyShare::from_hex("zz").unwrap_err();
    assert_eq!(e.to_string(), "malformed threshold OPRF key share encoding");
}

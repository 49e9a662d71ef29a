//! OPRF protocol properties beyond the RFC vectors.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sesphr_dedup::Error;
use sesphr_dedup::oprf::{self, ServerKey};

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Blind / evaluate / finalize equals the direct PRF
    /// `Hash(input, k * HashToGroup(input))`, whatever the blind.
    #[test]
    fn oblivious_evaluation_equals_direct_prf(
        seed in any::<[u8; 32]>(),
        info in proptest::collection::vec(any::<u8>(), 0..40),
        input in proptest::collection::vec(any::<u8>(), 0..200),
        rng_seed in any::<u64>(),
    ) {
        let key = ServerKey::derive(&seed, &info).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(rng_seed);
        let (state, blinded) = oprf::blind(&mut rng, &input).unwrap();
        let evaluated = oprf::blind_evaluate(&key, &blinded).unwrap();
        let out = oprf::finalize(state, &input, &evaluated).unwrap();
        prop_assert_eq!(out, oprf::evaluate(&key, &input).unwrap());
        // A second, differently blinded run gives the same output from
        // different messages.
        let (state2, blinded2) = oprf::blind(&mut rng, &input).unwrap();
        prop_assert_ne!(blinded, blinded2);
        let evaluated2 = oprf::blind_evaluate(&key, &blinded2).unwrap();
        prop_assert_eq!(oprf::finalize(state2, &input, &evaluated2).unwrap(), out);
    }

    #[test]
    fn random_bytes_are_rejected_by_every_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let key = ServerKey::derive(&[1; 32], b"x").unwrap();
        // 33-byte strings are valid points about half the time; everything
        // else must fail, and nothing may panic.
        let r = oprf::blind_evaluate(&key, &bytes);
        if bytes.len() != 33 || !matches!(bytes[0], 2 | 3) {
            prop_assert!(r.is_err());
        }
        let (state, _) = oprf::blind(&mut ChaCha20Rng::seed_from_u64(0), b"in").unwrap();
        let r = oprf::finalize(state, b"in", &bytes);
        if bytes.len() != 33 || !matches!(bytes[0], 2 | 3) {
            prop_assert!(r.is_err());
        }
        if bytes.len() != 32 {
            prop_assert!(ServerKey::from_bytes(&bytes).is_err());
        }
    }
}

#[test]
fn different_keys_and_inputs_give_different_outputs() {
    let k1 = ServerKey::derive(&[1; 32], b"a").unwrap();
    let k2 = ServerKey::derive(&[1; 32], b"b").unwrap();
    let k3 = ServerKey::derive(&[2; 32], b"a").unwrap();
    let o = |k: &ServerKey, x: &[u8]| oprf::evaluate(k, x).unwrap();
    assert_ne!(o(&k1, b"x"), o(&k2, b"x"));
    assert_ne!(o(&k1, b"x"), o(&k3, b"x"));
    assert_ne!(o(&k1, b"x"), o(&k1, b"y"));
    assert_eq!(o(&k1, b""), o(&k1, b""));
}

#[test]
fn finalize_with_the_wrong_input_or_element_gives_another_output() {
    let key = ServerKey::random(&mut ChaCha20Rng::seed_from_u64(3));
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (state, blinded) = oprf::blind(&mut rng, b"file").unwrap();
    let evaluated = oprf::blind_evaluate(&key, &blinded).unwrap();
    let right = oprf::evaluate(&key, b"file").unwrap();
    assert_ne!(oprf::finalize(state, b"fil", &evaluated).unwrap(), right);
    let (state, _) = oprf::blind(&mut rng, b"file").unwrap();
    // Echoing the blinded element back (a server without the key).
    assert_ne!(oprf::finalize(state, b"file", &blinded).unwrap(), right);
}

#[test]
fn key_serialisation() {
    let key = ServerKey::random(&mut ChaCha20Rng::seed_from_u64(9));
    let again = ServerKey::from_bytes(&*key.to_bytes()).unwrap();
    assert_eq!(key.public_key(), again.public_key());
    assert_eq!(
        oprf::evaluate(&key, b"q").unwrap(),
        oprf::evaluate(&again, b"q").unwrap()
    );
    assert!(matches!(
        ServerKey::from_bytes(&[0; 32]),
        Err(Error::Malformed(_))
    ));
    // n itself is not canonical.
    let n =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    assert!(ServerKey::from_bytes(&n).is_err());
    let state = oprf::blind(&mut ChaCha20Rng::seed_from_u64(1), b"")
        .unwrap()
        .0;
    assert_eq!(format!("{state:?}"), "BlindState(<redacted>)");
}

#[test]
fn identity_and_off_curve_points_are_rejected() {
    let key = ServerKey::derive(&[5; 32], b"").unwrap();
    // Compressed encodings of x = 0 .. 9: some are off the curve; each must
    // either fail or round-trip canonically, never panic.
    for x in 0u8..10 {
        for tag in [2u8, 3] {
            let mut p = [0u8; 33];
            p[0] = tag;
            p[32] = x;
            if let Ok(e) = oprf::blind_evaluate(&key, &p) {
                assert!(matches!(e[0], 2 | 3));
            }
        }
    }
    // SEC1 identity encoding (a single zero byte) and uncompressed points.
    assert!(oprf::blind_evaluate(&key, &[0]).is_err());
    let mut unc = [0u8; 65];
    unc[0] = 4;
    assert!(oprf::blind_evaluate(&key, &unc).is_err());
}

#[test]
fn hash_to_scalar_uses_the_suite_dst() {
    // Independent value from reference/sesphr_dedup_ref.py:
    // OS2IP(expand_message_xmd(b"abc", "HashToScalar-" || contextString, 48)) mod n.
    assert_eq!(
        hex::encode(oprf::hash_to_scalar_bytes(b"abc")),
        "bd9ecb903f45dbb76687a2c49939a5dc732d78684a22c0b5bc75a4b8f65d49cb"
    );
}

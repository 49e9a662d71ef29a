//! RFC 9497 Appendix A.3.1: OPRF(P-256, SHA-256), mode 0x00 ("OPRF Mode").
//!
//! Seed = a3 x 32, KeyInfo = "test key"; both test vectors use the same
//! blind. Cross-checked against the draft-irtf-cfrg-voprf test vectors and
//! two independent implementations' copies of the RFC text.

use sesphr_dedup::oprf::{self, ServerKey};

const SEED: [u8; 32] = [0xa3; 32];
const KEY_INFO: &str = "74657374206b6579";
const SK_SM: &str = "159749d750713afe245d2d39ccfaae8381c53ce92d098a9375ee70739c7ac0bf";
const BLIND: &str = "3338fa65ec36e0290022b48eb562889d89dbfa691d1cde91517fa222ed7ad364";

struct Vector {
    input: &'static str,
    blinded_element: &'static str,
    evaluation_element: &'static str,
    output: &'static str,
}

const VECTORS: [Vector; 2] = [
    Vector {
        input: "00",
        blinded_element: "03723a1e5c09b8b9c18d1dcbca29e8007e95f14f4732d9346d490ffc195110368d",
        evaluation_element: "030de02ffec47a1fd53efcdd1c6faf5bdc270912b8749e783c7ca75bb412958832",
        output: "a0b34de5fa4c5b6da07e72af73cc507cceeb48981b97b7285fc375345fe495dd",
    },
    Vector {
        input: "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        blinded_element: "03cc1df781f1c2240a64d1c297b3f3d16262ef5d4cf102734882675c26231b0838",
        evaluation_element: "03a0395fe3828f2476ffcd1f4fe540e5a8489322d398be3c4e5a869db7fcb7c52c",
        output: "c748ca6dd327f0ce85f4ae3a8cd6d4d5390bbb804c9e12dcf94f853fece3dcce",
    },
];

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn derive_key_pair() {
    let key = ServerKey::derive(&SEED, &unhex(KEY_INFO)).unwrap();
    assert_eq!(hex::encode(*key.to_bytes()), SK_SM);
}

#[test]
fn test_vectors() {
    let key = ServerKey::derive(&SEED, &unhex(KEY_INFO)).unwrap();
    let blind: [u8; 32] = unhex(BLIND).try_into().unwrap();
    for v in &VECTORS {
        let input = unhex(v.input);
        let (state, blinded) = oprf::blind_with_scalar(&blind, &input).unwrap();
        assert_eq!(hex::encode(blinded), v.blinded_element);
        let evaluated = oprf::blind_evaluate(&key, &blinded).unwrap();
        assert_eq!(hex::encode(evaluated), v.evaluation_element);
        let output = oprf::finalize(state, &input, &evaluated).unwrap();
        assert_eq!(hex::encode(output), v.output);
        assert_eq!(hex::encode(oprf::evaluate(&key, &input).unwrap()), v.output);
    }
}

#[test]
fn finalize_with_the_rfc_server_key_bytes() {
    // The same vectors starting from the serialised key.
    let key = ServerKey::from_bytes(&unhex(SK_SM)).unwrap();
    let blind: [u8; 32] = unhex(BLIND).try_into().unwrap();
    let v = &VECTORS[1];
    let input = unhex(v.input);
    let (state, blinded) = oprf::blind_with_scalar(&blind, &input).unwrap();
    let evaluated = oprf::blind_evaluate(&key, &blinded).unwrap();
    assert_eq!(
        hex::encode(oprf::finalize(state, &input, &evaluated).unwrap()),
        v.output
    );
}

"""The key proof of a re-enrolment (docs/crypto.md §4.3): the documented message, checked
with the `cryptography` library's own ECDSA verifier, and proofs the Rust
`SigningKey::sign_key_proof` made, byte for byte (both sign with RFC 6979 nonces and low s)."""

import hashlib
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sesphr_client import crypto as c

# From crates/crypto (sesphr_crypto::MasterSecret::from_bytes(&[0x42; 32]).signing_key()
# .sign_key_proof("sesphr.local", "alice", b"csr"), and SigningKey::from_bytes(7 as a
# 32-byte big-endian scalar).sign_key_proof("mesh.test", "bob-1", &[0, 1, 2, 255])).
RUST_VECTORS = [
    {"master": "42" * 32, "trust_domain": "sesphr.local", "user_id": "alice", "csr": b"csr",
     "verifying_key": "035b5bb360f5af2edf213a9de184d58b6b5704d2cbf9febf73468342e49896cac2",
     "proof": "388f57ae15e4d4bcda2ed57dd1ceac06b32530afed06503a47180433a1d36231"
              "24d129d47e1eaf181d8dceb1f3c86dd576331219bc3c339fa5149be297ef7470"},
    {"scalar": 7, "trust_domain": "mesh.test", "user_id": "bob-1", "csr": bytes([0, 1, 2, 255]),
     "verifying_key": "028e533b6fa0bf7b4625bb30667c01fb607ef9f8b8a80fef5b300628703187b2a3",
     "proof": "6d740449299f0211217fc7d815fded56a8933bd396d76462454d462b86e8dba6"
              "7c3acf72d5c458433c30253c06ff519ce6e7918ded8d1270599ed606a9a37ec3"},
]


def key_of(v) -> c.SigningKey:
    if "master" in v:
        return c.MasterSecret(bytes.fromhex(v["master"])).signing_key()
    return c.SigningKey(v["scalar"])


def documented(trust_domain: bytes, user_id: bytes, csr: bytes) -> bytes:
    return (b"SESPHR-V1-KEY-PROOF" + struct.pack(">H", len(trust_domain)) + trust_domain
            + struct.pack(">H", len(user_id)) + user_id + hashlib.sha256(csr).digest())


def library_verifies(q33: bytes, msg: bytes, proof: bytes) -> bool:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), q33)
    r, s = int.from_bytes(proof[:32], "big"), int.from_bytes(proof[32:], "big")
    try:
        key.verify(utils.encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


@pytest.mark.parametrize("v", RUST_VECTORS, ids=lambda v: v["user_id"])
def test_proofs_are_the_rust_ones_byte_for_byte(v):
    sk = key_of(v)
    assert sk.verifying_key_bytes().hex() == v["verifying_key"]
    proof = c.sign_key_proof(sk, v["trust_domain"], v["user_id"], v["csr"])
    assert proof.hex() == v["proof"]
    assert c.verify_key_proof(sk.verifying_key_bytes(), v["trust_domain"], v["user_id"],
                              v["csr"], bytes.fromhex(v["proof"]))


def test_the_signed_message_is_the_documented_one():
    sk = c.SigningKey(0x1234567890ABCDEF)
    msg = documented(b"mesh.test", b"alice", b"csr")
    assert c.key_proof_message("mesh.test", "alice", b"csr") == msg
    assert msg[:19] == b"SESPHR-V1-KEY-PROOF" and msg[19:21] == b"\x00\x09"
    proof = c.sign_key_proof(sk, "mesh.test", "alice", b"csr")
    assert len(proof) == 64
    assert 0 < int.from_bytes(proof[32:], "big") <= (c.N - 1) // 2  # low s
    assert library_verifies(sk.verifying_key_bytes(), msg, proof)
    # Deterministic (RFC 6979), as the Rust signer.
    assert c.sign_key_proof(sk, "mesh.test", "alice", b"csr") == proof


def test_a_proof_verifies_for_what_it_binds_only():
    sk = c.SigningKey(0xC0FFEE)
    vk = sk.verifying_key_bytes()
    proof = c.sign_key_proof(sk, "mesh.test", "alice", b"csr")
    assert c.verify_key_proof(vk, "mesh.test", "alice", b"csr", proof)
    for td, uid, csr in (("mesh.other", "alice", b"csr"), ("mesh.test", "mallory", b"csr"),
                         ("mesh.test", "alice", b"csr2"),
                         ("mesh.tes", "talice", b"csr")):  # the length prefixes keep them apart
        assert not c.verify_key_proof(vk, td, uid, csr, proof), (td, uid)
        assert not library_verifies(vk, documented(td.encode(), uid.encode(), csr), proof)
    other = c.SigningKey(0xBEEF).verifying_key_bytes()
    assert not c.verify_key_proof(other, "mesh.test", "alice", b"csr", proof)
    for bad in (b"", bytes(63), bytes(64), b"\xff" * 64, bytes(65)):
        assert not c.verify_key_proof(vk, "mesh.test", "alice", b"csr", bad)
    # Not a kfrag or record signature: the same key over the bare fields is another message.
    assert not library_verifies(vk, b"mesh.testalice" + hashlib.sha256(b"csr").digest(), proof)

"""The JSON test vectors of tests/vectors/ (docs/crypto.md §12), byte for byte."""

import json
from pathlib import Path

import pytest

from sesphr_client import crypto as c

VECTORS = Path(__file__).resolve().parents[3] / "tests" / "vectors"


def load(name):
    return json.loads((VECTORS / f"{name}.json").read_text())


def h(s):
    return bytes.fromhex(s)


def sc(s):
    return int(s, 16)


KEYS, PRE, RECORD = load("keys"), load("pre"), load("record")


def test_generator_u():
    v = KEYS["generator_u"]
    point = c.hash_to_curve(v["msg"].encode(), v["dst"].encode())
    assert c.encode_point(point).hex() == v["point"]
    assert c.encode_point(c.U).hex() == v["point"]


@pytest.mark.parametrize("v", KEYS["hash_to_scalar"], ids=lambda v: f'{v["dst"]}/{v["msg"]}')
def test_hash_to_scalar(v):
    assert c.h2s(v["dst"].encode(), h(v["msg"])) == sc(v["scalar"])


def test_master_secret_keys():
    master = c.MasterSecret(h(KEYS["master_secret"]))
    signer = master.signing_key()
    assert signer.d == sc(KEYS["signing_key"])
    assert signer.verifying_key_bytes().hex() == KEYS["verifying_key"]
    for v in KEYS["partition_keys"]:
        kp = master.partition_keys(v["partition"], v["epoch"])
        assert kp.secret == sc(v["secret_key"]), v
        assert kp.public_bytes().hex() == v["public_key"], v


def owner_and_grantee():
    o, g = PRE["owner"], PRE["grantee"]
    master = c.MasterSecret(h(o["master_secret"]))
    owner = master.partition_keys(o["partition"], o["epoch"])
    assert owner.secret == sc(o["secret_key"])
    assert owner.public_bytes().hex() == o["public_key"]
    signer = master.signing_key()
    assert signer.verifying_key_bytes().hex() == o["verifying_key"]
    grantee = c.KeyPair.from_secret(sc(g["secret_key"]))
    assert grantee.public_bytes().hex() == g["public_key"]
    return owner, signer, grantee


def test_encapsulate():
    owner, _, _ = owner_and_grantee()
    v = PRE["encapsulate"]
    capsule, kem_key = c.encapsulate(owner.public, r=sc(v["r"]), u=sc(v["u"]))
    assert capsule.to_bytes().hex() == v["capsule"]
    assert capsule.challenge() == sc(v["capsule_challenge"])
    assert kem_key.hex() == v["kem_key"]
    shared = owner.public * ((sc(v["r"]) + sc(v["u"])) % c.N)
    assert c.encode_point(shared).hex() == v["shared_point"]
    decoded = c.Capsule.from_bytes(h(v["capsule"]))
    assert c.decapsulate_original(owner.secret, decoded) == kem_key


def make_kfrags():
    owner, signer, grantee = owner_and_grantee()
    v = PRE["generate_kfrags"]
    kfrags = c.generate_kfrags(
        owner.secret, grantee.public, signer, v["threshold"], v["shares"],
        precursor_secret=sc(v["precursor_secret"]),
        coefficients=[sc(x) for x in v["coefficients"]],
        ids=[h(k["id"]) for k in v["kfrags"]])
    return owner, signer, grantee, kfrags


def test_generate_kfrags():
    owner, signer, grantee, kfrags = make_kfrags()
    v = PRE["generate_kfrags"]
    x_a = sc(v["precursor_secret"])
    assert c.encode_point(c.G * x_a).hex() == v["precursor"]
    dh = grantee.public * x_a
    assert c.encode_point(dh).hex() == v["dh_point"]
    base = c.encode_point(c.G * x_a) + grantee.public_bytes() + c.encode_point(dh)
    assert c.h2s(c.SHARED_SECRET_DST, base) == sc(v["shared_secret_d"])
    for kf, kv in zip(kfrags, v["kfrags"], strict=True):
        assert c.h2s(c.POLYNOMIAL_ARG_DST, base + kf.id) == sc(kv["share_index"])
        msg = c._kfrag_message(kf.id, kf.commitment, kf.precursor, owner.public, grantee.public)
        assert msg.hex() == kv["signed_message"]
        assert len(msg) == 189
        # RFC 6979 + low-s reproduces the signatures byte for byte (§4.2).
        assert kf.to_bytes().hex() == kv["kfrag"]
        decoded = c.KeyFrag.from_bytes(h(kv["kfrag"]))
        decoded.verify(signer.verifying_key_bytes(), owner.public, grantee.public)
        with pytest.raises(c.VerificationFailed):
            decoded.verify(signer.verifying_key_bytes(), grantee.public, owner.public)


def test_reencrypt_and_verify_cfrags():
    owner, signer, grantee, kfrags = make_kfrags()
    capsule = c.Capsule.from_bytes(h(PRE["encapsulate"]["capsule"]))
    vk = signer.verifying_key_bytes()
    for v in PRE["reencrypt"]:
        cfrag = c.reencrypt(capsule, kfrags[v["kfrag_index"]], t=sc(v["t"]))
        assert cfrag.to_bytes().hex() == v["cfrag"]
        decoded = c.CapsuleFrag.from_bytes(h(v["cfrag"]))
        decoded.verify(capsule, vk, owner.public, grantee.public)
        e1, v1, e2, v2, u2 = decoded.e1, decoded.v1, decoded.e2, decoded.v2, decoded.u2
        assert c._proof_challenge(capsule.e, e1, e2, capsule.v, v1, v2, decoded.u1, u2) == sc(v["challenge"])


def test_cfrag_verification_rejects_tampering():
    owner, signer, grantee, kfrags = make_kfrags()
    capsule = c.Capsule.from_bytes(h(PRE["encapsulate"]["capsule"]))
    vk = signer.verifying_key_bytes()
    good = h(PRE["reencrypt"][0]["cfrag"])
    # Wrong grantee key, wrong owner key, wrong verifying key.
    other = c.KeyPair.random()
    for args in [(vk, owner.public, other.public), (vk, other.public, grantee.public),
                 (other.public_bytes(), owner.public, grantee.public)]:
        with pytest.raises(c.VerificationFailed):
            c.CapsuleFrag.from_bytes(good).verify(capsule, *args)
    # A proof for another point: swap E1 with E2.
    swapped = good[131:164] + good[33:131] + good[:33] + good[164:]
    with pytest.raises(c.VerificationFailed):
        c.CapsuleFrag.from_bytes(swapped).verify(capsule, vk, owner.public, grantee.public)
    # z + 1.
    z = (int.from_bytes(good[263:295], "big") + 1) % c.N
    bumped = good[:263] + z.to_bytes(32, "big") + good[295:]
    with pytest.raises(c.VerificationFailed):
        c.CapsuleFrag.from_bytes(bumped).verify(capsule, vk, owner.public, grantee.public)


def test_decapsulate_reencrypted():
    owner, signer, grantee, _ = make_kfrags()
    capsule = c.Capsule.from_bytes(h(PRE["encapsulate"]["capsule"]))
    cfrags = [c.CapsuleFrag.from_bytes(h(v["cfrag"])).verify(
        capsule, signer.verifying_key_bytes(), owner.public, grantee.public) for v in PRE["reencrypt"]]
    for v in PRE["decapsulate_reencrypted"]:
        chosen = [cfrags[i] for i in v["cfrag_indices"]]
        dh = chosen[0].precursor * grantee.secret
        base = c.encode_point(chosen[0].precursor) + grantee.public_bytes() + c.encode_point(dh)
        xs = [c.h2s(c.POLYNOMIAL_ARG_DST, base + cf.kfrag_id) for cf in chosen]
        assert [f"{x:064x}" for x in c.lagrange_coefficients(xs)] == v["lagrange_coefficients"]
        kem = c.decapsulate_reencrypted(grantee.secret, owner.public, capsule, chosen)
        assert kem.hex() == v["kem_key"]
    # Below the threshold (t = 2) the check of §9 fails.
    with pytest.raises(c.DecryptionFailed):
        c.decapsulate_reencrypted(grantee.secret, owner.public, capsule, cfrags[:1])
    # Another grantee's secret fails too.
    with pytest.raises(c.DecryptionFailed):
        c.decapsulate_reencrypted(c.KeyPair.random().secret, owner.public, capsule, cfrags[:2])


@pytest.mark.parametrize("v", RECORD["records"], ids=lambda v: v["name"])
def test_record(v):
    hv = v["header"]
    header = c.RecordHeader.from_bytes(h(hv["bytes"]))
    assert header.record_id == h(hv["record_id"])
    assert header.owner_id == h(hv["owner_id"])
    assert header.partition == hv["partition"]
    assert header.epoch == hv["epoch"]
    assert header.key_source == hv["key_source"]
    assert header.capsule.to_bytes().hex() == hv["capsule"]
    assert header.segment_size == hv["segment_size"]
    assert header.nonce_prefix.hex() == hv["nonce_prefix"]
    assert header.to_bytes().hex() == hv["bytes"]
    if hv["key_source"] == 0:
        assert c.dem_key(h(v["kem_key"])).hex() == v["dem_key"]
    key = h(v["dem_key"])
    for i, s in enumerate(v["segments"]):
        assert c.segment_nonce(header.nonce_prefix, i, i == len(v["segments"]) - 1).hex() == s["nonce"]
    # Seal: reproduces every segment and the whole record.
    pt = h(v["plaintext"])
    buf = bytearray(pt)

    def read(n):
        out = bytes(buf[:n])
        del buf[:n]
        return out

    sealed = list(c.seal_segments(header, key, len(pt), read))
    assert [s.hex() for s in sealed] == [s["ciphertext"] for s in v["segments"]]
    assert (header.to_bytes() + b"".join(sealed)).hex() == v["record"]
    assert c.ciphertext_len(len(pt), header.segment_size) == sum(len(s) for s in sealed)
    # Open, whole and in odd-sized pieces.
    record = h(v["record"])
    if hv["key_source"] == 0:
        _, plain = c.open_record(record, kem_key=h(v["kem_key"]))
    else:
        _, plain = c.open_record(record, key=key)
    assert plain == pt
    body = record[len(header.to_bytes()):]
    opener = c.RecordOpener(header, key)
    out = b"".join(b"".join(opener.push(body[i:i + 1000])) for i in range(0, len(body), 1000))
    assert out + opener.finish() == pt


def test_record_tampering_and_truncation():
    v = RECORD["records"][0]
    record, key = h(v["record"]), h(v["dem_key"])
    hlen = len(h(v["header"]["bytes"]))
    flipped = bytearray(record)
    flipped[hlen + 5] ^= 1
    with pytest.raises(c.DecryptionFailed):
        c.open_record(bytes(flipped), key=key)
    first_segment = record[:hlen + 4096 + 16]
    with pytest.raises(c.Truncated):
        c.open_record(first_segment, key=key)
    with pytest.raises(c.Truncated):
        c.open_record(record[:hlen + 10], key=key)
    bad_header = bytearray(record)
    bad_header[hlen - 1] ^= 1  # nonce prefix, part of the AAD
    with pytest.raises(c.DecryptionFailed):
        c.open_record(bytes(bad_header), key=key)


@pytest.mark.parametrize("data", [
    b"", bytes(33), b"\x04" + bytes(32), b"\x02" + b"\xff" * 32,
    bytes.fromhex(KEYS["verifying_key"]) + b"\x00",
])
def test_point_decoding_rejects(data):
    with pytest.raises(c.Malformed):
        c.decode_point(data)


def test_scalar_and_capsule_decoding_rejects():
    with pytest.raises(c.Malformed):
        c.decode_scalar(c.N.to_bytes(32, "big"))
    with pytest.raises(c.Malformed):
        c.decode_scalar(bytes(32), nonzero=True)
    capsule = bytearray(h(PRE["encapsulate"]["capsule"]))
    capsule[-1] ^= 1
    with pytest.raises(c.Malformed):
        c.Capsule.from_bytes(bytes(capsule))


def test_round_trip_with_random_keys():
    master = c.MasterSecret.generate()
    owner = master.partition_keys("medical", 3)
    grantee = c.MasterSecret.generate().receiving_keys()
    signer = master.signing_key()
    capsule, kem = c.encapsulate(owner.public)
    kfrags = c.generate_kfrags(owner.secret, grantee.public, signer, 1, 1)
    cfrag = c.CapsuleFrag.from_bytes(c.reencrypt(capsule, c.KeyFrag.from_bytes(kfrags[0].to_bytes())).to_bytes())
    cfrag.verify(capsule, signer.verifying_key_bytes(), owner.public, grantee.public)
    assert c.decapsulate_reencrypted(grantee.secret, owner.public, capsule, [cfrag]) == kem
    assert c.decapsulate_original(owner.secret, capsule) == kem

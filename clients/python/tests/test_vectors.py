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


def test_node_kfrag_ids():
    for v in PRE["node_kfrag_ids"]:
        assert c.node_kfrag_id(h(v["context"]), v["node"]).hex() == v["id"]


def test_grant_context():
    # §7.4, byte by byte: u16be(5) "alice" u16be(7) "medical" u32be(1) u16be(3) "bob".
    expected = h("0005" "616c696365" "0007" "6d65646963616c" "00000001" "0003" "626f62")
    assert c.grant_context("alice", "medical", 1, "bob") == expected
    assert c.grant_context("", "p", 0xFFFFFFFF, "") == h("0000" "0001" "70" "ffffffff" "0000")
    # The lengths keep the fields apart.
    assert c.grant_context("alic", "emedical", 1, "bob") != expected
    assert c.grant_context("alice", "medical", 2, "bob") != expected
    with pytest.raises(c.InvalidParameter):
        c.grant_context("alice", "medical", 2**32, "bob")


def _node_kfrag_setup():
    owner = c.MasterSecret.generate()
    keys = owner.partition_keys("medical", 0)
    grantee = c.MasterSecret.generate().receiving_keys()
    return owner.signing_key(), keys, grantee, c.grant_context("alice", "medical", 0, "bob")


def test_generate_node_kfrags():
    """§7.4: share i carries node i's id; any t of them re-encrypt."""
    from itertools import combinations
    signer, keys, grantee, context = _node_kfrag_setup()
    kfrags = c.generate_node_kfrags(keys.secret, grantee.public, signer, 2, 3, context)
    assert [k.id for k in kfrags] == [c.node_kfrag_id(context, i) for i in (1, 2, 3)]
    assert len({c.encode_point(k.precursor) for k in kfrags}) == 1
    capsule, kem = c.encapsulate(keys.public)
    cfrags = []
    for k in kfrags:
        decoded = c.KeyFrag.from_bytes(k.to_bytes()).verify(signer.verifying_key_bytes(),
                                                             keys.public, grantee.public)
        cfrags.append(c.reencrypt(capsule, decoded).verify(
            capsule, signer.verifying_key_bytes(), keys.public, grantee.public))
    for pair in combinations(cfrags, 2):
        assert c.decapsulate_reencrypted(grantee.secret, keys.public, capsule, list(pair)) == kem
    # Re-granting in the same context: the same ids, new shares.
    again = c.generate_node_kfrags(keys.secret, grantee.public, signer, 2, 3, context)
    assert [k.id for k in again] == [k.id for k in kfrags]
    assert again[0].precursor != kfrags[0].precursor and again[0].rk != kfrags[0].rk
    with pytest.raises(c.InvalidParameter):
        c.generate_node_kfrags(keys.secret, grantee.public, signer, 4, 3, context)


def _zero_share_index_once(monkeypatch):
    """Makes the first share index x computed come out as 0; counts the precursors drawn."""
    real, state = c.h2s, {"zeroed": False, "precursors": 0}

    def h2s(dst, msg):
        if dst == c.SHARED_SECRET_DST:
            state["precursors"] += 1
        if dst == c.POLYNOMIAL_ARG_DST and not state["zeroed"]:
            state["zeroed"] = True
            return 0
        return real(dst, msg)
    monkeypatch.setattr(c, "h2s", h2s)
    return state


def test_fixed_id_with_unusable_share_draws_a_new_precursor(monkeypatch):
    """§7.4: "if x = 0 or rk = 0 for a fixed id, a new precursor x_A is drawn instead of a
    new id" (a node recomputes its id, so the id cannot change)."""
    signer, keys, grantee, context = _node_kfrag_setup()
    state = _zero_share_index_once(monkeypatch)
    kfrags = c.generate_node_kfrags(keys.secret, grantee.public, signer, 2, 3, context)
    assert state["zeroed"] and state["precursors"] == 2
    assert [k.id for k in kfrags] == [c.node_kfrag_id(context, i) for i in (1, 2, 3)]
    for k in kfrags:
        k.verify(signer.verifying_key_bytes(), keys.public, grantee.public)


def test_random_id_with_unusable_share_draws_a_new_id(monkeypatch):
    signer, keys, grantee, _ = _node_kfrag_setup()
    state = _zero_share_index_once(monkeypatch)
    kfrags = c.generate_kfrags(keys.secret, grantee.public, signer, 2, 3)
    assert state["zeroed"] and state["precursors"] == 1  # same precursor, another id
    assert len({k.id for k in kfrags}) == 3


def test_fixed_precursor_and_ids_with_unusable_share_fail(monkeypatch):
    signer, keys, grantee, context = _node_kfrag_setup()
    _zero_share_index_once(monkeypatch)
    with pytest.raises(c.InvalidParameter):
        c.generate_kfrags(keys.secret, grantee.public, signer, 1, 1, precursor_secret=5,
                          ids=[c.node_kfrag_id(context, 1)])


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


def record_keys(v):
    """The vector's owner: the signing key of keys.json's master secret."""
    signer = c.MasterSecret(h(KEYS["master_secret"])).signing_key()
    assert signer.verifying_key_bytes().hex() == v["owner_verifying_key"]
    return signer, h(v["owner_verifying_key"])


def sealed_with(header, key, signer, pt):
    buf = bytearray(pt)

    def read(n):
        out = bytes(buf[:n])
        del buf[:n]
        return out

    return list(c.seal_segments(header, key, signer, len(pt), read))


@pytest.mark.parametrize("v", RECORD["records"], ids=lambda v: v["name"])
def test_record(v):
    signer, vk = record_keys(v)
    binding = h(v["binding"])
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
    assert header.signature.hex() == v["header_signature"]
    assert header.to_bytes().hex() == hv["bytes"]
    raw = h(hv["bytes"])
    assert raw[4] == 2 and int.from_bytes(raw[5:7], "big") == len(raw)
    assert header.unsigned_bytes() == raw[:-64]
    # The header signature: RFC 6979 + low-s reproduces it byte for byte, and it
    # binds the binding (empty for a capsule-keyed record, blob || wrapped key for dedup).
    draft = c.RecordHeader(header.record_id, header.owner_id, header.partition, header.epoch,
                           header.key_source, header.capsule, header.segment_size,
                           header.nonce_prefix)
    assert draft.sign(signer, binding) == header
    header.verify(vk, binding)
    with pytest.raises(c.VerificationFailed):
        header.verify(vk, binding + b"\x00")
    with pytest.raises(c.VerificationFailed):
        header.verify(vk, b"" if binding else b"\x00" * 92)
    with pytest.raises(c.VerificationFailed):
        header.verify(c.MasterSecret.generate().signing_key().verifying_key_bytes(), binding)
    if hv["key_source"] == 0:
        assert c.dem_key(h(v["kem_key"])).hex() == v["dem_key"]
    key = h(v["dem_key"])
    hh = header.hash()
    for i, s in enumerate(v["segments"]):
        last = i == len(v["segments"]) - 1
        assert c.segment_nonce(header.nonce_prefix, i, last).hex() == s["nonce"]
        unit = h(s["ciphertext"])
        assert unit[-64:].hex() == s["signature"]
        assert c.verify_signature_prehashed(vk, c.segment_digest(hh, i, last, unit[:-64]),
                                            unit[-64:])
        # Signed as the other position or the other flag: refused.
        assert not c.verify_signature_prehashed(vk, c.segment_digest(hh, i, not last, unit[:-64]),
                                                unit[-64:])
    # Seal: reproduces every segment (AEAD and signature) and the whole record.
    pt = h(v["plaintext"])
    sealed = sealed_with(header, key, signer, pt)
    assert [s.hex() for s in sealed] == [s["ciphertext"] for s in v["segments"]]
    assert (header.to_bytes() + b"".join(sealed)).hex() == v["record"]
    assert c.ciphertext_len(len(pt), header.segment_size) == sum(len(s) for s in sealed)
    # Open, whole and in odd-sized pieces.
    record = h(v["record"])
    if hv["key_source"] == 0:
        _, plain = c.open_record(record, vk, kem_key=h(v["kem_key"]), binding=binding)
    else:
        _, plain = c.open_record(record, vk, key=key, binding=binding)
    assert plain == pt
    body = record[len(header.to_bytes()):]
    opener = c.RecordOpener(header, key, vk, binding)
    out = b"".join(b"".join(opener.push(body[i:i + 1000])) for i in range(0, len(body), 1000))
    assert out + opener.finish() == pt
    # A wrong binding is refused before any segment.
    with pytest.raises(c.VerificationFailed):
        c.RecordOpener(header, key, vk, binding + b"\x01")


@pytest.mark.parametrize("length,expected", [
    (0, 80), (1, 81), (4096, 4096 + 80), (4097, 4097 + 160), (3 * 4096, 3 * 4096 + 240)])
def test_ciphertext_len(length, expected):
    assert c.ciphertext_len(length, 4096) == expected


V0 = RECORD["records"][0]


def open_v0(record: bytes):
    _, vk = record_keys(V0)
    return c.open_record(record, vk, key=h(V0["dem_key"]))


def test_record_tampering_and_truncation():
    record = h(V0["record"])
    hlen = len(h(V0["header"]["bytes"]))
    unit = 4096 + 80
    flipped = bytearray(record)
    flipped[hlen + 5] ^= 1
    with pytest.raises(c.DecryptionFailed):
        open_v0(bytes(flipped))
    with pytest.raises(c.Truncated):
        open_v0(record[:hlen + unit])
    with pytest.raises(c.Truncated):
        open_v0(record[:hlen + 10])
    with pytest.raises(c.Truncated):
        open_v0(record[:hlen + unit + 79])
    # The nonce prefix is signed: changing it breaks the header signature.
    bad_header = bytearray(record)
    bad_header[hlen - 65] ^= 1
    with pytest.raises(c.VerificationFailed):
        open_v0(bytes(bad_header))
    # Segments swapped or the last one dropped/duplicated.
    seg0, seg1 = record[hlen:hlen + unit], record[hlen + unit:]
    for body in (seg1 + seg0, seg0 + seg0 + seg1, seg0 + seg1 + seg1):
        with pytest.raises((c.DecryptionFailed, c.Truncated)):
            open_v0(record[:hlen] + body)


@pytest.mark.parametrize("where", ["header", "segment 0", "segment 1"])
def test_flipped_signature_byte_is_refused(where):
    record = bytearray(h(V0["record"]))
    hlen = len(h(V0["header"]["bytes"]))
    unit = 4096 + 80
    end = {"header": hlen, "segment 0": hlen + unit, "segment 1": len(record)}[where]
    record[end - 40] ^= 0x01  # inside s
    with pytest.raises(c.VerificationFailed):
        open_v0(bytes(record))
    # Nothing of a refused segment 0 is released by the push-style opener either.
    if where == "segment 0":
        _, vk = record_keys(V0)
        header = c.RecordHeader.from_bytes(bytes(record[:hlen]))
        opener = c.RecordOpener(header, h(V0["dem_key"]), vk)
        with pytest.raises(c.VerificationFailed):
            opener.push(bytes(record[hlen:hlen + unit + 1]))
        with pytest.raises(c.DecryptionFailed):  # poisoned
            opener.finish()


def test_segment_resealed_by_a_key_holder_is_refused():
    """Whoever knows the AES key (every grantee) can write segments that authenticate under the
    owner's genuine header; the owner's segment signature is what refuses them."""
    record = h(V0["record"])
    _, vk = record_keys(V0)
    header = c.RecordHeader.from_bytes(h(V0["header"]["bytes"]))
    key = h(V0["dem_key"])
    forger = c.MasterSecret.generate().signing_key()
    forged_pt = b"forged" * 1000
    forged = header.to_bytes() + b"".join(sealed_with(header, key, forger, forged_pt))
    with pytest.raises(c.VerificationFailed):
        c.open_record(forged, vk, key=key)
    # The genuine first segment followed by a forged (but AEAD-valid) last one: the first
    # segment is released, the forged one never is.
    genuine = sealed_with(header, key, record_keys(V0)[0], h(V0["plaintext"]))
    bad = bytearray(sealed_with(header, key, forger, h(V0["plaintext"]))[1])
    opener = c.RecordOpener(header, key, vk)
    assert opener.push(genuine[0] + bytes(bad[:1])) == [h(V0["plaintext"])[:4096]]
    opener.push(bytes(bad[1:]))
    with pytest.raises(c.VerificationFailed):
        opener.finish()


def test_version_1_header_is_refused():
    raw = h(V0["header"]["bytes"])
    # Version byte set back to 1, with and without the signature.
    for v1 in (raw[:4] + b"\x01" + raw[5:],
               raw[:4] + b"\x01" + (len(raw) - 64).to_bytes(2, "big") + raw[7:-64]):
        with pytest.raises(c.Malformed):
            c.RecordHeader.from_bytes(v1)
        with pytest.raises(c.Malformed):
            c.RecordHeader.read_length(v1[:7])
    # A v2 header without its signature, or with trailing bytes, does not decode.
    for bad in (raw[:-64], raw + b"\x00", raw[:5] + (len(raw) - 64).to_bytes(2, "big") + raw[7:-64]):
        with pytest.raises(c.Malformed):
            c.RecordHeader.from_bytes(bad)


def test_unsigned_header_cannot_be_encoded():
    header = c.RecordHeader.from_bytes(h(V0["header"]["bytes"]))
    draft = c.RecordHeader.new(b"r", b"o", "medical", 0, header.capsule)
    with pytest.raises(c.InvalidParameter):
        draft.to_bytes()


def test_dedup_binding_and_wrapped_key_aad():
    blob_id, wrapped = bytes(range(32)), bytes(60)
    assert c.dedup_binding(b"", b"") == b""
    assert c.dedup_binding(blob_id, wrapped) == b"\x00\x20" + blob_id + wrapped
    # The wrapped content key is bound to the unsigned header bytes.
    header = c.RecordHeader.from_bytes(h(RECORD["records"][1]["header"]["bytes"]))
    kem, ck = bytes(range(32)), bytes(32)
    w = c.wrap_content_key(kem, ck, header.unsigned_bytes())
    assert c.unwrap_content_key(kem, w, header.unsigned_bytes()) == ck
    with pytest.raises(c.DecryptionFailed):
        c.unwrap_content_key(kem, w, header.to_bytes())


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

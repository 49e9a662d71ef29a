"""sesphr_client.tlog: RFC 9162 hashing and proofs against the Certificate Transparency
reference vectors (the same leaves, roots and proofs crates/tlog tests), checkpoint bodies,
signatures, quorums and the rule for advancing a pinned head. No mesh needed."""

import hashlib
import json
import random
from pathlib import Path

import ecdsa
import pytest

from sesphr_client import tlog as t

# The eight leaves of the Certificate Transparency reference tests.
LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
          "606162636465666768696a6b6c6d6e6f"]
# MTH(D[0:n]) for n = 1..8 (RFC 6962 reference values, as published with
# certificate-transparency-go's merkle verifier tests).
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, path).
INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# (first, second, proof).
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def h(s):
    return bytes.fromhex(s)


def leaf_hashes():
    return [t.leaf_hash(h(x)) for x in LEAVES]


def test_empty_and_leaf_hashes():
    assert t.empty_root() == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert t.tree_root([]) == t.empty_root()
    assert t.leaf_hash(b"\x00") == h(
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")


def test_reference_roots():
    leaves = leaf_hashes()
    for n, want in enumerate(ROOTS, start=1):
        assert t.tree_root(leaves[:n]) == h(want), f"size {n}"


@pytest.mark.parametrize("index,size,path", INCLUSION, ids=lambda v: str(v)[:12])
def test_reference_inclusion(index, size, path):
    leaves = leaf_hashes()
    want = [h(p) for p in path]
    assert t.inclusion_path(index, leaves[:size]) == want
    root = h(ROOTS[size - 1])
    leaf = leaves[index]
    t.verify_inclusion(index, size, leaf, want, root)
    # Wrong index, size, leaf, root, or any changed, added or dropped hash: refused.
    bad = []
    if size > 1:
        bad.append((index ^ 1, size, leaf, want, root))
    bad += [(index, size * 2, leaf, want, root), (index, size, b"\x07" * 32, want, root),
            (index, size, leaf, want, t.empty_root()), (index, size, leaf, want + [root], root),
            (index, size, leaf, [root] + want, root), (size, size, leaf, want, root)]
    for i in range(len(want)):
        bad.append((index, size, leaf, want[:i] + [t.empty_root()] + want[i + 1:], root))
    if want:
        bad.append((index, size, leaf, want[:-1], root))
    for args in bad:
        with pytest.raises(t.ProofError):
            t.verify_inclusion(*args)


@pytest.mark.parametrize("first,second,path", CONSISTENCY, ids=lambda v: str(v)[:12])
def test_reference_consistency(first, second, path):
    leaves = leaf_hashes()
    want = [h(p) for p in path]
    assert t.consistency_path(first, leaves[:second]) == want
    r1, r2 = h(ROOTS[first - 1]), h(ROOTS[second - 1])
    t.verify_consistency(first, second, r1, r2, want)
    if first == second:
        with pytest.raises(t.ProofError):
            t.verify_consistency(first, second, r1, t.empty_root(), [])
        return
    bad = [(first, second, r2, r2, want), (first, second, r1, r1, want),
           (first + 1, second, r1, r2, want), (first, second * 2, r1, r2, want),
           (first, second, r1, r2, []), (first, second, r1, r2, want + [r1]),
           (first, second, r1, r2, want[:-1]), (second, first, r2, r1, want)]
    for i in range(len(want)):
        bad.append((first, second, r1, r2, want[:i] + [t.empty_root()] + want[i + 1:]))
    for args in bad:
        with pytest.raises(t.ProofError):
            t.verify_consistency(*args)


def test_bad_sizes_and_hash_lengths_are_refused():
    r = h(ROOTS[3])
    for args in [(5, 4, r, r, []), (0, 4, r, r, []), (3, 3, r, h(ROOTS[2]), [])]:
        with pytest.raises(t.ProofError):
            t.verify_consistency(*args)
    with pytest.raises(t.ProofError, match="hash of 31 bytes"):
        t.verify_inclusion(0, 2, t.leaf_hash(b""), [b"\x00" * 31], r)
    with pytest.raises(t.ProofError, match="more than any tree needs"):
        t.verify_consistency(1, 2, r, r, [r] * 66)


def test_every_proof_of_small_trees_verifies():
    """Trees of 1..40 leaves: every inclusion and consistency proof made from the definition
    verifies, and none verifies at a neighbouring size."""
    leaves = [t.leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
    for size in range(1, 41):
        root = t.tree_root(leaves[:size])
        for index in range(size):
            p = t.inclusion_path(index, leaves[:size])
            assert len(p) == t._inclusion_len(index, size)
            t.verify_inclusion(index, size, leaves[index], p, root)
        for first in range(1, size + 1):
            p = t.consistency_path(first, leaves[:size])
            t.verify_consistency(first, size, t.tree_root(leaves[:first]), root, p)
            if first < size - 1:
                with pytest.raises(t.ProofError):
                    t.verify_consistency(first, size - 1, t.tree_root(leaves[:first]),
                                         t.tree_root(leaves[:size - 1]), p)


def test_verifiers_never_crash_on_garbage():
    rnd = random.Random(7)
    for _ in range(2000):
        size, index, first = rnd.randrange(0, 70), rnd.randrange(0, 70), rnd.randrange(0, 70)
        proof = [rnd.randbytes(32) for _ in range(rnd.randrange(0, 9))]
        for call in (lambda: t.verify_inclusion(index, size, b"\x00" * 32, proof, b"\x01" * 32),
                     lambda: t.verify_consistency(first, size, b"\x00" * 32, b"\x01" * 32, proof)):
            with pytest.raises(t.ProofError):
                call()


# Audit entries as leaves ----------------------------------------------------------------------
class Entry:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def entry(**over):
    e = dict(seq=3, time=1_700_000_000, actor="patient/alice", action="grant", owner_id="alice",
             partition="medical", subject="bob", record_id="", outcome="ok", detail="é",
             salt=bytes(range(16)), leaf_index=2)
    e.update(over)
    return Entry(**e)


def test_entry_leaf_data_is_version_salt_canonical():
    e = entry()
    canonical = (b"\x00" * 7 + b"\x03" + (1_700_000_000).to_bytes(8, "big")
                 + b"".join(len(f.encode()).to_bytes(4, "big") + f.encode()
                            for f in ["patient/alice", "grant", "alice", "medical", "bob", "",
                                      "ok", "é"]))
    assert t.canonical_bytes(e.seq, e.time, [getattr(e, f) for f in t.ENTRY_FIELDS]) == canonical
    assert t.entry_leaf_data(e) == b"\x01" + bytes(range(16)) + canonical
    assert t.entry_leaf_hash(e) == hashlib.sha256(b"\x00\x01" + bytes(range(16))
                                                  + canonical).digest()
    assert t.entry_leaf_index(e) == 2
    # A negative time is two's complement, as i64 big-endian.
    assert t.canonical_bytes(1, -1, [""] * 8)[8:16] == b"\xff" * 8
    with pytest.raises(t.TlogError, match="salt of 15 bytes"):
        t.entry_leaf_data(entry(salt=b"\x00" * 15))
    with pytest.raises(t.TlogError, match="leaf index 3"):
        t.entry_leaf_index(entry(leaf_index=3))
    # Every field is bound: another salt or field value is another leaf.
    for change in [dict(salt=b"\x01" * 16), dict(seq=4), dict(time=0), dict(detail="e"),
                   dict(actor="patient/alicf"), dict(subject="", record_id="bob")]:
        assert t.entry_leaf_hash(entry(**change)) != t.entry_leaf_hash(e), change


# Checkpoints and signatures -------------------------------------------------------------------
def cp(size=12, root=b"\xab" * 32, time=1_700_000_000, origin="sesphr.test/audit"):
    return t.Checkpoint(origin, size, root, time)


def test_body_is_as_specified_and_parses_strictly():
    body = cp().body()
    assert body == f"sesphr.test/audit\n12\n{'ab' * 32}\ntime 1700000000\n"
    assert t.Checkpoint.parse(body) == cp()
    assert t.Checkpoint.parse(cp(size=0, time=-5).body()) == cp(size=0, time=-5)
    for bad in [body.replace("\n12\n", "\n012\n"), body.replace("\n12\n", "\n+12\n"),
                body.upper(), body.rstrip(), body + "extra\n",
                body.replace("sesphr.test/audit", "two words"), body.replace("time ", "time  "),
                body.replace("time 1700000000", "time -0"),
                body.replace("time 1700000000", "time 01700000000"),
                body.replace("\n12\n", f"\n{1 << 64}\n"),
                body.replace("time 1700000000", f"time {1 << 63}"),
                body.replace("ab" * 32, "ab" * 31), body.replace("sesphr.test", "sésphr"),
                body.replace("sesphr.test/audit", "x" * 129), "\n" + body[body.index("\n") + 1:],
                body.replace("\n", "\r\n")]:
        with pytest.raises(t.CheckpointError):
            t.Checkpoint.parse(bad)


def keys(n, seed=b"k"):
    out = []
    for i in range(n):
        d = int.from_bytes(hashlib.sha256(seed + bytes([i])).digest(), "big") % (t.P256_N - 1) + 1
        out.append(t.SigningKey(d))
    return out


def test_signatures_are_independently_verifiable_and_bind_every_field():
    log, w = keys(2)
    c = cp(5, b"\x01" * 32)
    sig = t.sign_checkpoint(log, c)
    t.verify_checkpoint(log.public_key(), c, sig)
    # python-ecdsa, another implementation, agrees on the message and the r || s form.
    vk = ecdsa.VerifyingKey.from_string(log.public_key().raw, curve=ecdsa.NIST256p,
                                        hashfunc=hashlib.sha256)
    assert vk.verify(sig, b"sesphr-audit-checkpoint/v1\n" + c.body().encode())
    with pytest.raises(t.CheckpointError):
        t.verify_checkpoint(w.public_key(), c, sig)
    for changed in [cp(6, b"\x01" * 32), cp(5, b"\x02" * 32), cp(5, b"\x01" * 32, time=1),
                    cp(5, b"\x01" * 32, origin="other/audit")]:
        with pytest.raises(t.CheckpointError):
            t.verify_checkpoint(log.public_key(), changed, sig)
    co = t.cosign(w, "srs-node-1", 9, c)
    t.verify_cosignature(w.public_key(), c, co)
    assert ecdsa.VerifyingKey.from_string(w.public_key().raw, curve=ecdsa.NIST256p,
                                          hashfunc=hashlib.sha256).verify(
        co.signature, b"sesphr-audit-cosignature/v1\nwitness srs-node-1\ntime 9\n"
        + c.body().encode())
    for forged in [t.Cosignature("srs-node-2", 9, co.signature),
                   t.Cosignature("srs-node-1", 10, co.signature)]:
        with pytest.raises(t.CheckpointError):
            t.verify_cosignature(w.public_key(), c, forged)
    # A cosignature is no log signature (domain separation).
    with pytest.raises(t.CheckpointError):
        t.verify_checkpoint(w.public_key(), c, co.signature)


def test_high_s_and_malformed_signatures_are_refused():
    (log,) = keys(1, b"s")
    c = cp(1)
    sig = t.sign_checkpoint(log, c)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    assert s <= t.P256_N // 2
    high = r.to_bytes(32, "big") + (t.P256_N - s).to_bytes(32, "big")
    # The high-s twin is a valid ECDSA signature that only the low-s rule refuses.
    assert ecdsa.VerifyingKey.from_string(log.public_key().raw, curve=ecdsa.NIST256p,
                                          hashfunc=hashlib.sha256).verify(
        high, c.signed_message())
    for bad in [high, sig[:63], sig + b"\x00", b"\x00" * 64,
                (0).to_bytes(32, "big") + sig[32:], t.P256_N.to_bytes(32, "big") + sig[32:]]:
        with pytest.raises(t.CheckpointError):
            t.verify_checkpoint(log.public_key(), c, bad)


def test_key_formats():
    (k,) = keys(1, b"f")
    pub = k.public_key()
    assert len(pub.hex()) == 66 and pub.hex()[:2] in ("02", "03")
    assert t.PublicKey.from_hex(f" {pub.hex()}\n") == pub
    assert t.SigningKey.from_hex(f"{k._key.private_numbers().private_value:064x}\n"
                                 ).public_key() == pub
    uncompressed = ecdsa.VerifyingKey.from_string(pub.raw, curve=ecdsa.NIST256p).to_string(
        "uncompressed")
    for bad in ["05" + pub.hex()[2:], "04" + pub.hex()[2:], uncompressed.hex(), pub.hex()[:-2],
                "02" + "ff" * 32, "zz", ""]:
        with pytest.raises(t.CheckpointError):
            t.PublicKey.from_hex(bad)
    for bad in ["00", "00" * 32, f"{t.P256_N:064x}", "g" * 64]:
        with pytest.raises(t.CheckpointError):
            t.SigningKey.from_hex(bad)


def test_quorum_counts_distinct_known_valid_witnesses():
    log, *ws = keys(4, b"q")
    named = {f"w{i}": k.public_key() for i, k in enumerate(ws)}
    c = cp(3, b"\x03" * 32)
    sig = t.sign_checkpoint(log, c)
    c0, c1 = t.cosign(ws[0], "w0", 1, c), t.cosign(ws[1], "w1", 1, c)
    stranger = t.cosign(keys(1, b"x")[0], "w9", 1, c)
    lk = log.public_key()
    assert t.verify_witnessed(lk, t.SignedCheckpoint(c, sig, (c0, c1)), named, 2) == ["w0", "w1"]
    for cosigs in [(c0, c0, stranger), (c0, t.cosign(ws[1], "w1", 1, cp(3, b"\x04" * 32))),
                   (c0, t.Cosignature("w1", 1, c0.signature))]:
        with pytest.raises(t.CheckpointError, match="quorum"):
            t.verify_witnessed(lk, t.SignedCheckpoint(c, sig, cosigs), named, 2)
    assert t.verify_witnessed(lk, t.SignedCheckpoint(c, sig, ()), named, 0) == []
    # The log's own signature is required whatever the cosignatures.
    with pytest.raises(t.CheckpointError, match="log signature"):
        t.verify_witnessed(lk, t.SignedCheckpoint(c, c0.signature, (c0, c1)), named, 2)


def test_advance_accepts_extensions_and_names_every_kind_of_tampering():
    leaves = [t.leaf_hash(bytes([i])) for i in range(12)]

    def head(n, ls=leaves):
        return t.Checkpoint("o", n, t.tree_root(ls[:n]), 0)

    t.check_advance(head(4), head(10), t.consistency_path(4, leaves[:10]))
    t.check_advance(head(10), head(10), [])
    t.check_advance(head(0), head(3), [])
    with pytest.raises(t.Inconsistency, match="shrank from 10 to 7"):
        t.check_advance(head(10), head(7), [])
    other = list(leaves)
    other[2] = t.leaf_hash(b"\x63")
    with pytest.raises(t.Inconsistency, match="does not extend the pinned size 4"):
        t.check_advance(head(4), head(12, other), t.consistency_path(4, other))
    with pytest.raises(t.Inconsistency, match="forked at size 10"):
        t.check_advance(head(10), head(10, other), [])
    with pytest.raises(t.Inconsistency, match="origin changed"):
        t.check_advance(head(4), t.Checkpoint("p", 10, head(10).root, 0),
                        t.consistency_path(4, leaves[:10]))


# The mesh file's [audit] and the pin file -----------------------------------------------------
def audit_section(n=4, **over):
    log, *ws = keys(n + 1, b"m")
    sec = {"origin": "sesphr.local/audit", "log_key": log.public_key().hex(),
           "witness_quorum": n // 2 + 1,
           "witnesses": [{"name": f"srs-node-{i + 1}", "key": k.public_key().hex()}
                         for i, k in enumerate(ws)]}
    sec.update(over)
    return sec


def test_mesh_audit_section():
    from sesphr_client.client import _check_audit
    assert _check_audit(None, "sesphr.local") is None
    cfg = _check_audit(audit_section(), "sesphr.local")
    assert cfg.origin == "sesphr.local/audit" and cfg.witness_quorum == 3
    assert [n for n, _ in cfg.witnesses] == [f"srs-node-{i}" for i in range(1, 5)]
    # Defaults: the trust domain's origin, a majority quorum.
    sec = audit_section()
    del sec["origin"], sec["witness_quorum"]
    cfg = _check_audit(sec, "example.org")
    assert cfg.origin == "example.org/audit" and cfg.witness_quorum == 3
    assert _check_audit(audit_section(witness_quorum=0), "d").witness_quorum == 0
    w = audit_section()["witnesses"]
    for bad, why in [
        (audit_section(extra=1), "takes only"),
        ({k: v for k, v in audit_section().items() if k != "log_key"}, "no log_key"),
        (audit_section(log_key="04" + "00" * 32), "compressed"),
        (audit_section(witness_quorum=5), "witness_quorum 5"),
        (audit_section(witness_quorum=-1), "witness_quorum -1"),
        (audit_section(witness_quorum=True), "witness_quorum True"),
        (audit_section(witnesses=w + [dict(w[0])]), "listed twice"),
        (audit_section(witnesses=w + [{"name": "cloud-storage", "key": w[0]["key"]}]),
         "listed already"),
        (audit_section(witnesses=[{**w[0], "extra": 1}]), "exactly name and key"),
        (audit_section(witnesses=[{"name": "two words", "key": w[0]["key"]}]), "printable"),
        (audit_section(origin=""), "printable"),
        (audit_section(witnesses={"name": "x"}), "array of tables"),
    ]:
        with pytest.raises(ValueError, match=why):
            _check_audit(bad, "sesphr.local")


def test_pin_file_round_trips_and_is_private(tmp_path):
    from sesphr_client.client import AuditHead, ClientError
    log, w = keys(2, b"p")
    c = cp(7, b"\x07" * 32, origin="sesphr.local/audit")
    signed = t.SignedCheckpoint(c, t.sign_checkpoint(log, c),
                                (t.cosign(w, "srs-node-1", 1_700_000_001, c),))
    head = AuditHead(tmp_path)
    assert head.load() is None
    head.save(signed)
    assert head.load() == signed
    assert (tmp_path / "audit-head.toml").stat().st_mode & 0o777 == 0o600
    text = (tmp_path / "audit-head.toml").read_text()
    assert text.startswith(f'origin = "sesphr.local/audit"\nsize = 7\nroot = "{"07" * 32}"\n'
                           f'time = 1700000000\nsignature = "{signed.signature.hex()}"\n')
    assert '[[cosignatures]]\nwitness = "srs-node-1"\ntime = 1700000001\n' in text
    for bad in [text.replace("size = 7", "size = -1"), text.replace('"07', '"7'),
                text + "extra = 1\n", text.replace("witness =", "name ="),
                text.replace("size = 7\n", "")]:
        (tmp_path / "audit-head.toml").write_text(bad)
        with pytest.raises(ClientError, match="audit-head.toml"):
            head.load()


# Checkpoints signed by sesphrd ------------------------------------------------
RUST_VECTORS = Path(__file__).resolve().parent / "vectors" / "tlog-mesh.json"


def test_checkpoints_signed_by_sesphrd():
    """Checkpoints, cosignatures and inclusion proofs recorded from a `sesphrd dev` mesh (the
    Rust log and witnesses), with the keys from its DIR/pki: this client must accept exactly
    them, and nothing changed in them."""
    v = json.loads(RUST_VECTORS.read_text())
    log_key = t.PublicKey.from_hex(v["log_key"])
    witnesses = {w["name"]: t.PublicKey.from_hex(w["key"]) for w in v["witnesses"]}
    signed = []
    for c in v["checkpoints"]:
        cp_ = t.Checkpoint.parse(c["body"])
        assert cp_.origin == v["origin"]
        s = t.SignedCheckpoint(cp_, h(c["signature"]), tuple(
            t.Cosignature(x["witness"], x["time"], h(x["signature"])) for x in c["cosignatures"]))
        assert sorted(t.verify_witnessed(log_key, s, witnesses, len(witnesses))) == sorted(witnesses)
        # Any flipped bit in the body breaks the log signature.
        flipped = c["body"].replace(c["body"].split("\n")[2], c["body"].split("\n")[2][::-1])
        with pytest.raises(t.CheckpointError):
            t.verify_witnessed(log_key, t.SignedCheckpoint(t.Checkpoint.parse(flipped),
                                                           s.signature, s.cosignatures),
                               witnesses, 0)
        signed.append(s)
    first, second = signed[0].checkpoint, signed[-1].checkpoint
    assert 1 < first.size < second.size and v["inclusion"]
    consistency = [h(x) for x in v["consistency"]]
    t.check_advance(first, second, consistency)
    with pytest.raises(t.Inconsistency):
        t.check_advance(first, t.Checkpoint(second.origin, second.size, first.root, second.time),
                        consistency)
    for p in v["inclusion"]:
        e = Entry(**{**p["entry"], "salt": h(p["entry"]["salt"])})
        path = [h(x) for x in p["hashes"]]
        t.verify_inclusion(t.entry_leaf_index(e), second.size, t.entry_leaf_hash(e), path,
                           second.root)
        e.detail += "!"
        with pytest.raises(t.ProofError):
            t.verify_inclusion(t.entry_leaf_index(e), second.size, t.entry_leaf_hash(e), path,
                               second.root)

#!/usr/bin/env python3
"""Reference implementation of the client side of sesphr-dedup, in plain
Python (standard library + `cryptography` for AES-GCM), written from the
byte-level description in ../README.md.

It is deliberately slow and simple (no constant-time arithmetic): use it to
check another implementation, not to protect secrets.

    python3 sesphr_dedup_ref.py        # runs the RFC 9497 and README vectors

The threshold OPRF part (README §5) covers the dealer, the node and the
client: dealing with given coefficients, share evaluation with a given
proof nonce, proof verification and Lagrange combination.
"""

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# --- P-256 -----------------------------------------------------------------

P = 2**256 - 2**224 + 2**192 + 2**96 - 1
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
Z = P - 10  # RFC 9380 suite P256_XMD:SHA-256_SSWU_RO_


def ec_add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return (x3, (lam * (x1 - x3) - y1) % P)


def ec_mul(k, point):
    result = None
    for bit in bin(k % N)[2:]:
        result = ec_add(result, result)
        if bit == "1":
            result = ec_add(result, point)
    return result


def serialize_element(point):
    """SEC1 compressed, 33 bytes."""
    x, y = point
    return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")


def deserialize_element(data):
    if len(data) != 33 or data[0] not in (2, 3):
        raise ValueError("malformed element")
    x = int.from_bytes(data[1:], "big")
    if x >= P:
        raise ValueError("malformed element")
    y2 = (x * x * x + A * x + B) % P
    y = pow(y2, (P + 1) // 4, P)
    if y * y % P != y2:
        raise ValueError("not on the curve")
    if (y & 1) != (data[0] & 1):
        y = P - y
    return (x, y)


# --- RFC 9380 hash to curve ------------------------------------------------


def expand_message_xmd(msg, dst, length):
    ell = -(-length // 32)
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha256(
        bytes(64) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime
    ).digest()
    out = [hashlib.sha256(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        prev = bytes(a ^ b for a, b in zip(b0, out[-1]))
        out.append(hashlib.sha256(prev + bytes([i]) + dst_prime).digest())
    return b"".join(out)[:length]


def map_to_curve_sswu(u):
    tv1 = (Z * Z * pow(u, 4, P) + Z * u * u) % P
    tv1 = pow(tv1, -1, P) if tv1 else 0
    x1 = (-B * pow(A, -1, P)) * (1 + tv1) % P
    if tv1 == 0:
        x1 = B * pow(Z * A, -1, P) % P
    gx1 = (x1**3 + A * x1 + B) % P
    y1 = pow(gx1, (P + 1) // 4, P)
    if y1 * y1 % P == gx1:
        x, y = x1, y1
    else:
        x = Z * u * u * x1 % P
        gx2 = (x**3 + A * x + B) % P
        y = pow(gx2, (P + 1) // 4, P)
    if (u & 1) != (y & 1):
        y = P - y
    return (x, y)


def hash_to_curve(msg, dst):
    okm = expand_message_xmd(msg, dst, 96)
    u0 = int.from_bytes(okm[:48], "big") % P
    u1 = int.from_bytes(okm[48:], "big") % P
    return ec_add(map_to_curve_sswu(u0), map_to_curve_sswu(u1))


def hash_to_scalar(msg, dst):
    return int.from_bytes(expand_message_xmd(msg, dst, 48), "big") % N


# --- RFC 9497 OPRF(P-256, SHA-256), mode 0x00 ------------------------------

CONTEXT = b"OPRFV1-\x00-P256-SHA256"


def derive_key_pair(seed, info):
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        sk = hash_to_scalar(
            derive_input + bytes([counter]), b"DeriveKeyPair" + CONTEXT
        )
        if sk:
            return sk
    raise ValueError("DeriveKeyPairError")


def blind(data, r):
    """r: the blinding scalar (random, non-zero, < N)."""
    point = hash_to_curve(data, b"HashToGroup-" + CONTEXT)
    return serialize_element(ec_mul(r, point))


def blind_evaluate(sk, blinded):
    return serialize_element(ec_mul(sk, deserialize_element(blinded)))


def finalize(data, r, evaluated):
    unblinded = serialize_element(ec_mul(pow(r, -1, N), deserialize_element(evaluated)))
    return hashlib.sha256(
        len(data).to_bytes(2, "big")
        + data
        + len(unblinded).to_bytes(2, "big")
        + unblinded
        + b"Finalize"
    ).digest()


# --- Threshold OPRF (README §5) ----------------------------------------------

MAX_SHARES = 16
SHARE_PROOF_DST = b"HashToScalar-SeSPHR threshold OPRF share proof v1"


def deal(sk, coefficients, count):
    """Shares (i, f(i)) for i = 1..count of f(x) = sk + a_1 x + ... ."""
    assert 1 <= len(coefficients) + 1 <= count <= MAX_SHARES
    poly = [sk] + coefficients
    shares = []
    for i in range(1, count + 1):
        k = sum(a * pow(i, j, N) for j, a in enumerate(poly)) % N
        assert k, "zero share"
        shares.append((i, k))
    return shares


def encode_share(i, k):
    return bytes([i]) + k.to_bytes(32, "big")


def decode_share_hex(text):
    data = bytes.fromhex(text.strip())
    i, k = data[0], int.from_bytes(data[1:], "big")
    if len(data) != 33 or not 1 <= i <= MAX_SHARES or not 0 < k < N:
        raise ValueError("malformed key share")
    return i, k


def public_share(k):
    return serialize_element(ec_mul(k, G))


def share_challenge(i, pub, blinded, evaluated, t2, t3):
    msg = bytes([i])
    for element in (pub, blinded, evaluated, t2, t3):
        msg += len(element).to_bytes(2, "big") + element
    return hash_to_scalar(msg + b"Challenge", SHARE_PROOF_DST)


def evaluate_share(i, k, blinded, r):
    """Node i's answer: i || Z_i || c || s (98 bytes); r is the proof nonce."""
    point = deserialize_element(blinded)
    z = serialize_element(ec_mul(k, point))
    t2 = serialize_element(ec_mul(r, G))
    t3 = serialize_element(ec_mul(r, point))
    c = share_challenge(i, public_share(k), blinded, z, t2, t3)
    s = (r - c * k) % N
    return bytes([i]) + z + c.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_share(i, pub, blinded, evaluation):
    if len(evaluation) != 98 or evaluation[0] != i:
        return False
    z = evaluation[1:34]
    c = int.from_bytes(evaluation[34:66], "big")
    s = int.from_bytes(evaluation[66:], "big")
    if c >= N or s >= N:
        return False
    t2 = ec_add(ec_mul(s, G), ec_mul(c, deserialize_element(pub)))
    t3 = ec_add(ec_mul(s, deserialize_element(blinded)), ec_mul(c, deserialize_element(z)))
    if t2 is None or t3 is None:
        return False
    return share_challenge(i, pub, blinded, z, serialize_element(t2), serialize_element(t3)) == c


def lagrange_at_zero(i, xs):
    lam = 1
    for j in xs:
        if j != i:
            lam = lam * j * pow(j - i, -1, N) % N
    return lam


def combine(threshold, evaluations):
    xs = [e[0] for e in evaluations]
    assert 1 <= threshold <= MAX_SHARES and len(xs) >= threshold
    assert len(set(xs)) == len(xs) and all(1 <= x <= MAX_SHARES for x in xs)
    used = evaluations[:threshold]
    total = None
    for e in used:
        lam = lagrange_at_zero(e[0], [u[0] for u in used])
        total = ec_add(total, ec_mul(lam, deserialize_element(e[1:34])))
    return serialize_element(total)


# --- Convergent blob encryption ----------------------------------------------


def hkdf_sha256(ikm, info, length):
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()  # salt absent
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def content_key(oprf_output):
    return hkdf_sha256(oprf_output, b"SeSPHR-v1 content key", 32)


def blob_header(segment_size):
    return b"SPHB\x01" + struct.pack(">I", segment_size)


def seal_blob(ck, plaintext, segment_size=1 << 20):
    header = blob_header(segment_size)
    key = hkdf_sha256(ck, b"SeSPHR-v1 blob key" + header, 32)
    prefix = hkdf_sha256(ck, b"SeSPHR-v1 blob nonce prefix" + header, 7)
    aead = AESGCM(key)
    segments = max(1, -(-len(plaintext) // segment_size))
    out = [header]
    for i in range(segments):
        last = i == segments - 1
        chunk = plaintext[i * segment_size : (i + 1) * segment_size]
        nonce = prefix + struct.pack(">I", i) + (b"\x01" if last else b"\x00")
        out.append(aead.encrypt(nonce, chunk, header))
    return b"".join(out)


def open_blob(ck, blob):
    header = blob[:9]
    if header[:5] != b"SPHB\x01":
        raise ValueError("malformed blob header")
    segment_size = struct.unpack(">I", header[5:9])[0]
    key = hkdf_sha256(ck, b"SeSPHR-v1 blob key" + header, 32)
    prefix = hkdf_sha256(ck, b"SeSPHR-v1 blob nonce prefix" + header, 7)
    aead = AESGCM(key)
    body, seg, out, i = blob[9:], segment_size + 16, [], 0
    while True:
        last = len(body) <= seg
        nonce = prefix + struct.pack(">I", i) + (b"\x01" if last else b"\x00")
        out.append(aead.decrypt(nonce, body[:seg], header))
        if last:
            return b"".join(out)
        body, i = body[seg:], i + 1


def unwrap_content_key(kem_key, wrapped, aad):
    key = hkdf_sha256(kem_key, b"SeSPHR-v1 content key wrap", 32)
    return AESGCM(key).decrypt(wrapped[:12], wrapped[12:], aad)


# --- Merkle tree and proofs of ownership -------------------------------------

LEAF = 4096


def leaf_hash(i, data):
    return hashlib.sha256(b"\x00" + struct.pack(">Q", i) + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaves_of(blob):
    return [blob[i : i + LEAF] for i in range(0, len(blob), LEAF)] or [b""]


def merkle_levels(blob):
    level = [leaf_hash(i, leaf) for i, leaf in enumerate(leaves_of(blob))]
    levels = [level]
    while len(level) > 1:
        nxt = [node_hash(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # promoted
        level = nxt
        levels.append(level)
    return levels


def merkle_root(blob):
    levels = merkle_levels(blob)
    return levels[-1][0], len(levels[0])


def challenge_indices(nonce, n, k):
    if k >= n:
        return list(range(n))
    words, counter = [], 0

    def next_word():
        nonlocal counter
        if not words:
            block = hashlib.sha256(
                b"SeSPHR-v1 pow challenge indices"
                + nonce
                + struct.pack(">QIQ", n, k, counter)
            ).digest()
            counter += 1
            words.extend(struct.unpack(">4Q", block))
        return words.pop(0)

    def uniform(m):
        zone = (2**64 // m) * m
        while True:
            r = next_word()
            if r < zone:
                return r % m

    chosen = set()
    for j in range(n - k, n):
        t = uniform(j + 1)
        chosen.add(j if t in chosen else t)
    return sorted(chosen)


def parse_challenge(data):
    assert data[:5] == b"SPHC\x01"
    nonce = data[5:37]
    issued_at, leaf_count, count = struct.unpack(">QQI", data[37:57])
    indices = list(struct.unpack(">%dQ" % count, data[57:]))
    assert indices == challenge_indices(nonce, leaf_count, count)
    return nonce, issued_at, leaf_count, indices


def prove(challenge_bytes, blob):
    nonce, _, leaf_count, indices = parse_challenge(challenge_bytes)
    levels = merkle_levels(blob)
    assert len(levels[0]) == leaf_count
    leaves = leaves_of(blob)
    out = [b"SPHP\x01", nonce, struct.pack(">I", len(indices))]
    for i in indices:
        path, p = [], i
        for level in levels[:-1]:
            sibling = p ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            p //= 2
        out += [struct.pack(">QH", i, len(leaves[i])), leaves[i], bytes([len(path)])]
        out += path
    return b"".join(out)


# --- Self-test -------------------------------------------------------------


def _check(name, got, want):
    got = got.hex() if isinstance(got, bytes) else str(got)
    assert got == want, f"{name}: {got} != {want}"
    print(f"ok  {name}")


def main():
    # RFC 9497 Appendix A.3.1.
    sk = derive_key_pair(bytes([0xA3] * 32), b"test key")
    _check("RFC skSm", sk.to_bytes(32, "big"),
           "159749d750713afe245d2d39ccfaae8381c53ce92d098a9375ee70739c7ac0bf")
    r = 0x3338FA65EC36E0290022B48EB562889D89DBFA691D1CDE91517FA222ED7AD364
    for data, want in [
        (b"\x00", "a0b34de5fa4c5b6da07e72af73cc507cceeb48981b97b7285fc375345fe495dd"),
        (bytes([0x5A] * 17), "c748ca6dd327f0ce85f4ae3a8cd6d4d5390bbb804c9e12dcf94f853fece3dcce"),
    ]:
        evaluated = blind_evaluate(sk, blind(data, r))
        _check("RFC output", finalize(data, r, evaluated), want)

    # README vectors.
    sk = derive_key_pair(bytes([0xA3] * 32), b"SeSPHR dedup test")
    _check("skS", sk.to_bytes(32, "big"),
           "2cae5e79ed6b6f6151dd4b7d2ecbe55848e9470810f07570ae8fc45827df537e")
    p1 = b"hello, SeSPHR"
    x = hashlib.sha256(p1).digest()
    r = int.from_bytes(bytes([0x11] * 32), "big")
    blinded = blind(x, r)
    _check("P1 blinded", blinded,
           "02bb1cbf792929b7d1aec2ccb86218cde23361680c07b4757205345bb20493d6b7")
    evaluated = blind_evaluate(sk, blinded)
    _check("P1 evaluated", evaluated,
           "029cd05a5f88ff66e971ab475c015a69c0c7261287a2469ae47aa387357ca52bd6")
    out = finalize(x, r, evaluated)
    _check("P1 oprf_output", out,
           "af687dc27620980311e54befdb7ee01ac4212d052d304f01bd34f219f39df45e")
    ck = content_key(out)
    _check("P1 content_key", ck,
           "6c2ea4902fbd414c6a7fa10402eb87e44bbf925653a414ea2a0000136edff221")
    blob = seal_blob(ck, p1)
    _check("P1 blob", blob,
           "535048420100100000cac01ac8c5ad4b18e5574744cbb1c45c0a28791cbecf6ed7614afe783a")
    _check("P1 blob_id", hashlib.sha256(blob).digest(),
           "d635f8d94c66eaa6c4edb8055b5aef115b84f187c390c3e70a2ab03d32e1c5f6")
    assert open_blob(ck, blob) == p1
    wrapped = bytes.fromhex(
        "b2f7f581d6de3c06a822fd6e048d7d3b6bb6cbedc4eef2432d7dd3947352958f"
        "be52f1f531dad9909e8aba0215f8097d3c36d8e3f9ff770c599e2664")
    _check("P1 unwrap", unwrap_content_key(bytes([0x42] * 32), wrapped, b"record-1"), ck.hex())

    p2 = bytes(i % 251 for i in range(2 * 4096 + 100))
    sk_out = finalize(hashlib.sha256(p2).digest(), 1,
                      blind_evaluate(sk, blind(hashlib.sha256(p2).digest(), 1)))
    ck = content_key(sk_out)
    _check("P2 content_key", ck,
           "07fc3af6b4c611c6cecd269c779b90a66c3cd10eba997c3309c81a15fe1b08c7")
    blob = seal_blob(ck, p2, 4096)
    assert len(blob) == 8349 and open_blob(ck, blob) == p2
    _check("P2 blob_id", hashlib.sha256(blob).digest(),
           "4ba26e796cff8dbebc20d21d07677cb7e8b960fd1b3165bad0d5675a1dc2edfe")
    root, n = merkle_root(blob)
    _check("P2 root", root,
           "c6f41a711a13f6a28a08771b858cc6b483979e62fbf40f4a9dbeaf16d1f561e6")
    nonce = bytes(range(32))
    _check("indices(n=1000,k=5)", challenge_indices(nonce, 1000, 5), "[276, 436, 757, 775, 896]")
    ch = bytes.fromhex(
        "5350484301000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "000000006553f100000000000000000300000002"
        "00000000000000000000000000000002")
    _check("P2 challenge indices", parse_challenge(ch)[3], "[0, 2]")
    _check("P2 proof sha256", hashlib.sha256(prove(ch, blob)).digest(),
           "24c8028f474a48686e573945ca7fbe0979341378cb2ad1ad4f7f85e1b4af022a")

    # Threshold OPRF: skS shared 2-of-3 with a_1 = 22 x 32; node i answers
    # P1's blinded element with proof nonce (0x30 + i) x 32.
    shares = deal(sk, [int.from_bytes(bytes([0x22] * 32), "big")], 3)
    want = {
        1: ("014ed0809c0f8d918373ff6d9f50ee077a6b0b692a33129792d0b1e67a4a0175a0",
            "02a3f034b0af846bd9bff8bfd045c96bb58e1ad00d48740a5f9e3585659ec12a08",
            "010356c4625a123fa95b4175eef53172a6f660f5133c89e4413293c783bf7510e1"
            "97f52d31e9903984fb32b2d54abcbd8b497a1519e013772a21636ea038fca49b"
            "381b6c6724eca7481e5b71fa7eeb46594b650246cec9d9d33fface0340b1d270c8"),
        2: ("0270f2a2be31afb3a596218fc17310299c8d2d8b4c5534b9b4f2d4089c6c2397c2",
            "03a73db4606d2f393f58cd15b00af466b37853b9d2aded5de82123cddbfdb79f27",
            "0203e7c85f892c11299e6201c750605cb8526626c3e8e9b536fdff8db58eb801ec"
            "65fcf45289cd53e6c1615bbce85aec42d07b21592d49c092d8fc130a93a812f0"
            "3a69aecbafdaa1eaba8221377e2a7e39862df079719beb4438b4251ad536868d42"),
        3: ("039314c4e053d1d5c7b843b1e395324bbeaf4fad6e7756dbd714f62abe8e45b9e4",
            "036b3a760e0487f1f02f774ae51fdd81f532a02ee58df9856dde4428447edb090f",
            "030368d897647adb76335307bc6fe5126b9d456822eb95e6754ed3df41d14a6d46"
            "89c47e3cf94d2b88629fd070b097b2cbe3fb6ec84ba4f8ab78a9073385faacbf"
            "6fc42c836b7c2b810e3a46714e1c220b6f02332892d12f0e241ade88049b88622a"),
    }
    x = hashlib.sha256(p1).digest()
    blinded = blind(x, int.from_bytes(bytes([0x11] * 32), "big"))
    evaluations = {}
    for i, k in shares:
        share_hex, pub_hex, evaluation_hex = want[i]
        _check(f"T{i} share", encode_share(i, k), share_hex)
        assert decode_share_hex(share_hex.upper() + "\n") == (i, k)
        pub = public_share(k)
        _check(f"T{i} public_share", pub, pub_hex)
        evaluation = evaluate_share(i, k, blinded, int.from_bytes(bytes([0x30 + i] * 32), "big"))
        _check(f"T{i} evaluation", evaluation, evaluation_hex)
        assert verify_share(i, pub, blinded, evaluation)
        assert not verify_share(i % 3 + 1, pub, blinded, bytes([i % 3 + 1]) + evaluation[1:])
        assert not verify_share(i, public_share(shares[i % 3][1]), blinded, evaluation)
        evaluations[i] = evaluation
    p1_evaluated = "029cd05a5f88ff66e971ab475c015a69c0c7261287a2469ae47aa387357ca52bd6"
    for pair in [(3, 1), (1, 2), (2, 3)]:
        combined = combine(2, [evaluations[i] for i in pair])
        _check(f"T combine{pair} = P1 evaluated", combined, p1_evaluated)
    _check("T lambda_3 of {3, 1}", lagrange_at_zero(3, [3, 1]).to_bytes(32, "big"),
           "7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8")
    _check("T lambda_1 of {3, 1}", lagrange_at_zero(1, [3, 1]).to_bytes(32, "big"),
           "7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192aa")
    _check("T oprf_output", finalize(x, r, combine(2, [evaluations[3], evaluations[1]])),
           "af687dc27620980311e54befdb7ee01ac4212d052d304f01bd34f219f39df45e")
    # A 1-of-1 dealing: the single share is skS itself.
    _check("T 1-of-1 share", encode_share(*deal(sk, [], 1)[0]),
           "01" + sk.to_bytes(32, "big").hex())


if __name__ == "__main__":
    main()

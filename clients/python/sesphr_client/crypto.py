"""SeSPHR cryptography (record format version 2), written from docs/crypto.md alone.

Section numbers (§) refer to docs/crypto.md. P-256 point arithmetic comes
from python-ecdsa; SHA-256, HMAC, HKDF, ECDSA and AES-256-GCM from
`cryptography`. Everything else (hash-to-field, hash-to-curve for U, the
Umbral-style KEM, kfrags, cfrags and their proofs, the record format) is
here, in the order of the spec.

This is a test and interoperability client: the scalar multiplications of
python-ecdsa and Python's big integers are NOT constant-time, so do not use
this module where an attacker can time secret-key operations.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from ecdsa import NIST256p
from ecdsa.ellipticcurve import INFINITY, PointJacobi

# §1.1 -----------------------------------------------------------------------
CURVE = NIST256p.curve
P = CURVE.p()
N = NIST256p.order
A_COEF = P - 3
B_COEF = CURVE.b()
G = NIST256p.generator

# §2.3 -----------------------------------------------------------------------
GENERATOR_U_DST = b"SESPHR-V1-P256_XMD:SHA-256_SSWU_RO_GENERATOR-U"
GENERATOR_U_MSG = b"U"
CAPSULE_DST = b"SESPHR-V1-H2S-CAPSULE"
SHARED_SECRET_DST = b"SESPHR-V1-H2S-SHARED-SECRET"
POLYNOMIAL_ARG_DST = b"SESPHR-V1-H2S-POLYNOMIAL-ARG"
CFRAG_PROOF_DST = b"SESPHR-V1-H2S-CFRAG-PROOF"
KFRAG_SIGNATURE_PREFIX = b"SESPHR-V1-KFRAG-SIGNATURE"
KFRAG_NODE_ID_PREFIX = b"SESPHR-V1-KFRAG-NODE-ID"
RECORD_HEADER_SIGNATURE_PREFIX = b"SESPHR-V2-RECORD-HEADER-SIGNATURE"
RECORD_SEGMENT_SIGNATURE_PREFIX = b"SESPHR-V2-RECORD-SEGMENT-SIGNATURE"
KEM_KEY_INFO = b"SESPHR-V1-KEM-KEY"
DEM_KEY_INFO = b"SESPHR-V1-DEM-KEY-AES256GCM-STREAM-BE32"
MASTER_SALT = b"SESPHR-V1-MASTER-SECRET"
PARTITION_KEY_INFO = b"SESPHR-V1-PARTITION-KEY"
SIGNING_KEY_INFO = b"SESPHR-V1-KFRAG-SIGNING-KEY"
KEY_PROOF_PREFIX = b"SESPHR-V1-KEY-PROOF"

CAPSULE_LEN = 98
KFRAG_LEN = 194
CFRAG_LEN = 359
TAG_LEN = 16
SIGNATURE_LEN = 64
SEGMENT_OVERHEAD = TAG_LEN + SIGNATURE_LEN  # §10.4: every segment carries its tag and a signature
DEFAULT_SEGMENT_SIZE = 1 << 20


# §11 ------------------------------------------------------------------------
class CryptoError(Exception):
    """Base of every error of this module."""


class Malformed(CryptoError):
    """Public bytes that do not decode."""


class VerificationFailed(CryptoError):
    """A kfrag, cfrag or record signature (or a cfrag proof) does not verify."""


class DecryptionFailed(CryptoError):
    """Decapsulation or AEAD failure."""


class Truncated(CryptoError):
    """The record ended before its last segment."""


class InvalidParameter(CryptoError):
    """A caller error."""


# §1.2, §1.3 encodings --------------------------------------------------------
def encode_point(pt) -> bytes:
    """SEC1c(P): 33 bytes. The identity has no encoding."""
    if pt == INFINITY:
        raise InvalidParameter("the identity point has no encoding")
    return bytes([2 | (pt.y() & 1)]) + pt.x().to_bytes(32, "big")


def decode_point(data: bytes, what: str = "point") -> PointJacobi:
    if len(data) != 33 or data[0] not in (2, 3):
        raise Malformed(what)
    x = int.from_bytes(data[1:], "big")
    if x >= P:
        raise Malformed(what)
    rhs = (pow(x, 3, P) + A_COEF * x + B_COEF) % P
    y = pow(rhs, (P + 1) // 4, P)
    if y * y % P != rhs:
        raise Malformed(what)
    if (y & 1) != (data[0] & 1):
        y = P - y
    return PointJacobi(CURVE, x, y, 1, N)


def encode_scalar(s: int) -> bytes:
    return (s % N).to_bytes(32, "big")


def decode_scalar(data: bytes, what: str = "scalar", nonzero: bool = False) -> int:
    if len(data) != 32:
        raise Malformed(what)
    s = int.from_bytes(data, "big")
    if s >= N or (nonzero and s == 0):
        raise Malformed(what)
    return s


def random_nonzero_scalar() -> int:
    """Uniform in [1, n-1] (64 random bytes reduced mod n, retry on 0; §4.1)."""
    while True:
        s = int.from_bytes(os.urandom(64), "big") % N
        if s:
            return s


# §2 hashing --------------------------------------------------------------------
def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 with SHA-256."""
    ell = -(-length // 32)
    if ell > 255 or length > 65535 or len(dst) > 255:
        raise InvalidParameter("expand_message_xmd parameters out of range")
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha256(bytes(64) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    b = [hashlib.sha256(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, b[-1]))
        b.append(hashlib.sha256(mixed + bytes([i]) + dst_prime).digest())
    return b"".join(b)[:length]


def h2s(dst: bytes, msg: bytes) -> int:
    """§2.2: hash_to_field into F_n, count 1, L = 48."""
    return int.from_bytes(expand_message_xmd(msg, dst, 48), "big") % N


def _sqrt_mod_p(a: int):
    y = pow(a, (P + 1) // 4, P)
    return y if y * y % P == a % P else None


def _map_to_curve_sswu(u: int):
    """RFC 9380 §6.6.2 simplified SWU for P-256 (Z = -10), straight-line form."""
    z = P - 10
    tv1 = (z * z * pow(u, 4, P) + z * u * u) % P
    tv1 = pow(tv1, P - 2, P)  # inv0: 0 stays 0
    if tv1 == 0:
        x1 = B_COEF * pow(z * A_COEF, P - 2, P) % P
    else:
        x1 = (P - B_COEF) * pow(A_COEF, P - 2, P) * (1 + tv1) % P
    gx1 = (pow(x1, 3, P) + A_COEF * x1 + B_COEF) % P
    y = _sqrt_mod_p(gx1)
    if y is not None:
        x = x1
    else:
        x = z * u * u * x1 % P
        y = _sqrt_mod_p((pow(x, 3, P) + A_COEF * x + B_COEF) % P)
    if (u & 1) != (y & 1):
        y = P - y
    return PointJacobi(CURVE, x, y, 1, N)


def hash_to_curve(msg: bytes, dst: bytes):
    """RFC 9380 P256_XMD:SHA-256_SSWU_RO_ (hash_to_field count 2, L 48)."""
    uniform = expand_message_xmd(msg, dst, 96)
    u0 = int.from_bytes(uniform[:48], "big") % P
    u1 = int.from_bytes(uniform[48:], "big") % P
    return _map_to_curve_sswu(u0) + _map_to_curve_sswu(u1)


# §3: the second generator.
U = hash_to_curve(GENERATOR_U_MSG, GENERATOR_U_DST)


# §2.4, §4, §5 keys -------------------------------------------------------------
def hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with salt = none."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


@dataclass(frozen=True)
class KeyPair:
    secret: int
    public: PointJacobi

    @classmethod
    def from_secret(cls, secret: int) -> "KeyPair":
        if not 1 <= secret < N:
            raise InvalidParameter("secret key out of range")
        return cls(secret, G * secret)

    @classmethod
    def random(cls) -> "KeyPair":
        return cls.from_secret(random_nonzero_scalar())

    def public_bytes(self) -> bytes:
        return encode_point(self.public)


class MasterSecret:
    """§5: the patient's 32-byte master secret and the keys derived from it."""

    def __init__(self, raw: bytes):
        if len(raw) != 32:
            raise Malformed("MasterSecret")
        self.raw = bytes(raw)
        h = hmac.HMAC(MASTER_SALT, hashes.SHA256())
        h.update(self.raw)
        self._prk = h.finalize()

    @classmethod
    def generate(cls) -> "MasterSecret":
        return cls(os.urandom(32))

    def _derive(self, info: bytes) -> int:
        okm = HKDFExpand(algorithm=hashes.SHA256(), length=48, info=info).derive(self._prk)
        return int.from_bytes(okm, "big") % (N - 1) + 1

    def partition_keys(self, partition: str, epoch: int) -> KeyPair:
        p = partition.encode("utf-8")
        if not 1 <= len(p) <= 255 or not 0 <= epoch < 2**32:
            raise InvalidParameter("partition name or epoch out of range")
        info = PARTITION_KEY_INFO + struct.pack(">H", len(p)) + p + struct.pack(">I", epoch)
        return KeyPair.from_secret(self._derive(info))

    def receiving_keys(self) -> KeyPair:
        """The pair a user receives re-encrypted capsules under."""
        return self.partition_keys("@receive", 0)

    def signing_key(self) -> "SigningKey":
        return SigningKey(self._derive(SIGNING_KEY_INFO))


class SigningKey:
    """§4.2: ECDSA P-256/SHA-256, 64-byte low-s r||s, RFC 6979 nonces."""

    def __init__(self, d: int):
        self.d = d
        self._key = ec.derive_private_key(d, ec.SECP256R1())

    def verifying_key_bytes(self) -> bytes:
        return encode_point(G * self.d)

    def sign(self, msg: bytes) -> bytes:
        return self._canonical(self._key.sign(
            msg, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))

    def sign_prehashed(self, digest: bytes) -> bytes:
        """The signature of a message whose SHA-256 is `digest`: sign(m) == sign_prehashed(SHA-256(m))."""
        if len(digest) != 32:
            raise InvalidParameter("a SHA-256 digest is 32 bytes")
        return self._canonical(self._key.sign(
            digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)))

    @staticmethod
    def _canonical(der: bytes) -> bytes:
        r, s = utils.decode_dss_signature(der)
        if s > (N - 1) // 2:
            s = N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _verify(q33: bytes, data: bytes, sig: bytes, algorithm) -> bool:
    if len(sig) != SIGNATURE_LEN:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s <= (N - 1) // 2):
        return False
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), q33)
        key.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(algorithm))
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_signature(q33: bytes, msg: bytes, sig: bytes) -> bool:
    """§4.2 verification of `sig` over `msg` under the 33-byte verifying key `q33`."""
    return _verify(q33, msg, sig, hashes.SHA256())


def verify_signature_prehashed(q33: bytes, digest: bytes, sig: bytes) -> bool:
    """verify_signature of a message whose SHA-256 is `digest`."""
    return len(digest) == 32 and _verify(q33, digest, sig, utils.Prehashed(hashes.SHA256()))


# §4.3 key proof (re-enrolment) ------------------------------------------------------
def key_proof_message(trust_domain: str, user_id: str, csr_der: bytes) -> bytes:
    """§4.3: KEY_PROOF_PREFIX || I2OSP(len(trust_domain), 2) || trust_domain
    || I2OSP(len(user_id), 2) || user_id || SHA-256(csr_der), the message a key proof signs."""
    out = KEY_PROOF_PREFIX
    for field in (trust_domain.encode("utf-8"), user_id.encode("utf-8")):
        if len(field) > 0xFFFF:
            raise InvalidParameter("a key proof field is at most 65535 bytes")
        out += struct.pack(">H", len(field)) + field
    return out + hashlib.sha256(csr_der).digest()


def sign_key_proof(key: "SigningKey", trust_domain: str, user_id: str, csr_der: bytes) -> bytes:
    """§4.3: proves possession of the kfrag-signing key `key` for the certificate request
    `csr_der` of `user_id` in `trust_domain` (Srs/Enroll.key_proof, 64 bytes r || s, low s)."""
    return key.sign(key_proof_message(trust_domain, user_id, csr_der))


def verify_key_proof(q33: bytes, trust_domain: str, user_id: str, csr_der: bytes,
                     proof: bytes) -> bool:
    """Whether `proof` is a key proof by the verifying key `q33` (what the SRS checks)."""
    return verify_signature(q33, key_proof_message(trust_domain, user_id, csr_der), proof)


# §6 encapsulation --------------------------------------------------------------
@dataclass(frozen=True)
class Capsule:
    e: PointJacobi
    v: PointJacobi
    s: int

    def challenge(self) -> int:
        return h2s(CAPSULE_DST, encode_point(self.e) + encode_point(self.v))

    def to_bytes(self) -> bytes:
        return encode_point(self.e) + encode_point(self.v) + encode_scalar(self.s)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Capsule":
        if len(data) != CAPSULE_LEN:
            raise Malformed("Capsule")
        cap = cls(
            decode_point(data[:33], "Capsule"),
            decode_point(data[33:66], "Capsule"),
            decode_scalar(data[66:], "Capsule"),
        )
        if G * cap.s != cap.v + cap.e * cap.challenge():
            raise Malformed("Capsule")
        return cap


def _kem_key(shared, capsule: Capsule) -> bytes:
    return hkdf(encode_point(shared), KEM_KEY_INFO + capsule.to_bytes())


def encapsulate(pk, r: int | None = None, u: int | None = None) -> tuple[Capsule, bytes]:
    """§6.1. `r` and `u` are for test vectors only."""
    while True:
        r_ = r if r is not None else random_nonzero_scalar()
        u_ = u if u is not None else random_nonzero_scalar()
        if (r_ + u_) % N:
            break
        if r is not None and u is not None:
            raise InvalidParameter("r + u = 0")
    e, v = G * r_, G * u_
    h = h2s(CAPSULE_DST, encode_point(e) + encode_point(v))
    capsule = Capsule(e, v, (u_ + r_ * h) % N)
    return capsule, _kem_key(pk * ((r_ + u_) % N), capsule)


def decapsulate_original(sk: int, capsule: Capsule) -> bytes:
    """§6.3."""
    return _kem_key((capsule.e + capsule.v) * sk, capsule)


# §7 kfrags ----------------------------------------------------------------------
def _kfrag_message(kid: bytes, u1, precursor, pk_a, pk_b) -> bytes:
    return (KFRAG_SIGNATURE_PREFIX + kid + encode_point(u1) + encode_point(precursor)
            + encode_point(pk_a) + encode_point(pk_b))


@dataclass(frozen=True)
class KeyFrag:
    id: bytes
    rk: int
    precursor: PointJacobi
    commitment: PointJacobi
    signature: bytes

    def to_bytes(self) -> bytes:
        return (self.id + encode_scalar(self.rk) + encode_point(self.precursor)
                + encode_point(self.commitment) + self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> "KeyFrag":
        if len(data) != KFRAG_LEN:
            raise Malformed("KeyFrag")
        return cls(
            data[:32],
            decode_scalar(data[32:64], "KeyFrag", nonzero=True),
            decode_point(data[64:97], "KeyFrag"),
            decode_point(data[97:130], "KeyFrag"),
            data[130:194],
        )

    def verify(self, verifying_key: bytes, pk_a, pk_b) -> "KeyFrag":
        """§7.2 (what the proxy does)."""
        msg = _kfrag_message(self.id, self.commitment, self.precursor, pk_a, pk_b)
        if U * self.rk != self.commitment or not verify_signature(verifying_key, msg, self.signature):
            raise VerificationFailed("kfrag")
        return self


def node_kfrag_id(context: bytes, node: int) -> bytes:
    """§7.4: the id of the kfrag meant for re-encryption node `node`."""
    return hashlib.sha256(KFRAG_NODE_ID_PREFIX + len(context).to_bytes(4, "big") + context
                          + node.to_bytes(4, "big")).digest()


def grant_context(owner: str, partition: str, epoch: int, grantee: str) -> bytes:
    """§7.4: the `context` of a grant's node kfrag ids,
    `u16be(len(owner)) || owner || u16be(len(partition)) || partition || u32be(epoch) ||
    u16be(len(grantee)) || grantee` (UTF-8)."""
    if not 0 <= epoch < 2**32:
        raise InvalidParameter("epoch must be a u32")

    def field(s: str) -> bytes:
        b = s.encode()
        if len(b) > 0xFFFF:
            raise InvalidParameter("grant context fields are at most 65535 bytes")
        return len(b).to_bytes(2, "big") + b

    return field(owner) + field(partition) + epoch.to_bytes(4, "big") + field(grantee)


def _poly_eval(coeffs: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % N
    return acc


def _kfrags_with(a: int, pk_b, signer: SigningKey, x_a: int, tail: list[int], ids: list[bytes],
                 fresh_id) -> list[KeyFrag] | None:
    """§7.1 with the precursor secret, f_1..f_{t-1} and the ids given. `fresh_id()` replaces an
    id whose x or rk is 0, or returns None to give up; None also when d = 0."""
    pk_a = G * a
    precursor = G * x_a
    dh = pk_b * x_a
    base = encode_point(precursor) + encode_point(pk_b) + encode_point(dh)
    d = h2s(SHARED_SECRET_DST, base)
    if not d:
        return None
    coeffs = [a * pow(d, -1, N) % N, *tail]
    kfrags = []
    for kid in ids:
        while True:
            x = h2s(POLYNOMIAL_ARG_DST, base + kid)
            rk = _poly_eval(coeffs, x)
            if x and rk:
                break
            kid = fresh_id()
            if kid is None:
                return None
        u1 = U * rk
        sig = signer.sign(_kfrag_message(kid, u1, precursor, pk_a, pk_b))
        kfrags.append(KeyFrag(kid, rk, precursor, u1, sig))
    return kfrags


def generate_kfrags(a: int, pk_b, signer: SigningKey, threshold: int, shares: int, *,
                    precursor_secret: int | None = None, coefficients: list[int] | None = None,
                    ids: list[bytes] | None = None) -> list[KeyFrag]:
    """§7.1. The keyword arguments fix the random inputs (test vectors only).

    Random ids: an id giving x = 0 or rk = 0 is replaced by a new one. Given ids are kept
    (§7.4: a node recomputes its id): then a new precursor secret (and new coefficients, unless
    given) are drawn instead, or, with `precursor_secret` given too, InvalidParameter."""
    if not 1 <= threshold <= shares <= 255:
        raise InvalidParameter("need 1 <= t <= N <= 255")
    if coefficients is not None and len(coefficients) != threshold - 1:
        raise InvalidParameter("need t - 1 coefficients")
    if ids is not None and (len(ids) != shares or any(len(i) != 32 for i in ids)):
        raise InvalidParameter("need N ids of 32 bytes")
    while True:
        x_a = precursor_secret if precursor_secret is not None else random_nonzero_scalar()
        tail = coefficients if coefficients is not None else [
            random_nonzero_scalar() for _ in range(threshold - 1)]
        if ids is None:
            out = _kfrags_with(a, pk_b, signer, x_a, tail, [os.urandom(32) for _ in range(shares)],
                               lambda: os.urandom(32))
        else:
            out = _kfrags_with(a, pk_b, signer, x_a, tail, ids, lambda: None)
        if out is not None:
            return out
        if precursor_secret is not None:
            raise InvalidParameter("d = 0, or x = 0 or rk = 0 for a given id")


def generate_node_kfrags(a: int, pk_b, signer: SigningKey, threshold: int, nodes: int,
                         context: bytes) -> list[KeyFrag]:
    """§7.4: a t-of-`nodes` sharing whose kfrag i - 1 carries `node_kfrag_id(context, i)` and is
    meant for node i (1..=nodes) only."""
    if not 1 <= nodes <= 255:
        raise InvalidParameter("need 1 <= t <= N <= 255")
    return generate_kfrags(a, pk_b, signer, threshold, nodes,
                           ids=[node_kfrag_id(context, i) for i in range(1, nodes + 1)])


# §8 re-encryption -----------------------------------------------------------------
def _proof_challenge(e, e1, e2, v, v1, v2, u1, u2) -> int:
    return h2s(CFRAG_PROOF_DST, b"".join(encode_point(p) for p in (e, e1, e2, v, v1, v2, U, u1, u2)))


@dataclass(frozen=True)
class CapsuleFrag:
    e1: PointJacobi
    v1: PointJacobi
    kfrag_id: bytes
    precursor: PointJacobi
    e2: PointJacobi
    v2: PointJacobi
    u1: PointJacobi
    u2: PointJacobi
    z: int
    signature: bytes

    def to_bytes(self) -> bytes:
        pts = lambda *ps: b"".join(encode_point(p) for p in ps)  # noqa: E731
        return (pts(self.e1, self.v1) + self.kfrag_id + pts(self.precursor, self.e2, self.v2,
                self.u1, self.u2) + encode_scalar(self.z) + self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CapsuleFrag":
        if len(data) != CFRAG_LEN:
            raise Malformed("CapsuleFrag")
        pt = lambda off: decode_point(data[off:off + 33], "CapsuleFrag")  # noqa: E731
        return cls(pt(0), pt(33), data[66:98], pt(98), pt(131), pt(164), pt(197), pt(230),
                   decode_scalar(data[263:295], "CapsuleFrag"), data[295:359])

    def verify(self, capsule: Capsule, verifying_key: bytes, pk_a, pk_b) -> "CapsuleFrag":
        """§8.3 (what the grantee does)."""
        msg = _kfrag_message(self.kfrag_id, self.u1, self.precursor, pk_a, pk_b)
        if not verify_signature(verifying_key, msg, self.signature):
            raise VerificationFailed("cfrag signature")
        h = _proof_challenge(capsule.e, self.e1, self.e2, capsule.v, self.v1, self.v2, self.u1, self.u2)
        ok = (capsule.e * self.z == self.e2 + self.e1 * h
              and capsule.v * self.z == self.v2 + self.v1 * h
              and U * self.z == self.u2 + self.u1 * h)
        if not ok:
            raise VerificationFailed("cfrag proof")
        return self


def reencrypt(capsule: Capsule, kfrag: KeyFrag, t: int | None = None) -> CapsuleFrag:
    """§8.1 (what the proxy does; here for the test vectors)."""
    t = t if t is not None else random_nonzero_scalar()
    e1, v1 = capsule.e * kfrag.rk, capsule.v * kfrag.rk
    e2, v2, u2 = capsule.e * t, capsule.v * t, U * t
    h = _proof_challenge(capsule.e, e1, e2, capsule.v, v1, v2, kfrag.commitment, u2)
    return CapsuleFrag(e1, v1, kfrag.id, kfrag.precursor, e2, v2, kfrag.commitment, u2,
                       (t + h * kfrag.rk) % N, kfrag.signature)


# §9 ----------------------------------------------------------------------------------
def lagrange_coefficients(xs: list[int]) -> list[int]:
    """λ_i = Π_{j≠i} x_j · (x_j − x_i)⁻¹ mod n."""
    out = []
    for i, xi in enumerate(xs):
        lam = 1
        for j, xj in enumerate(xs):
            if j != i:
                lam = lam * xj * pow((xj - xi) % N, -1, N) % N
        out.append(lam)
    return out


def decapsulate_reencrypted(b: int, pk_a, capsule: Capsule, cfrags: list[CapsuleFrag]) -> bytes:
    """§9. `cfrags` must have been verified (CapsuleFrag.verify)."""
    fail = DecryptionFailed("decapsulation failed")
    if not cfrags:
        raise fail
    precursor = cfrags[0].precursor
    if any(cf.precursor != precursor for cf in cfrags):
        raise fail
    pk_b = G * b
    dh = precursor * b
    base = encode_point(precursor) + encode_point(pk_b) + encode_point(dh)
    d = h2s(SHARED_SECRET_DST, base)
    xs = [h2s(POLYNOMIAL_ARG_DST, base + cf.kfrag_id) for cf in cfrags]
    if len(set(xs)) != len(xs):
        raise fail
    e_sum, v_sum = INFINITY, INFINITY
    for lam, cf in zip(lagrange_coefficients(xs), cfrags):
        e_sum = e_sum + cf.e1 * lam
        v_sum = v_sum + cf.v1 * lam
    h = capsule.challenge()
    if e_sum == INFINITY or v_sum == INFINITY or pk_a * capsule.s != (e_sum * h + v_sum) * d:
        raise fail
    shared = (e_sum + v_sum) * d
    if shared == INFINITY:
        raise fail
    return _kem_key(shared, capsule)


# §10 records --------------------------------------------------------------------------
MAGIC = b"SPHR"
VERSION = 2  # §10.1: version 1 (unsigned records) is refused, so no one can downgrade a record
MIN_SEGMENT, MAX_SEGMENT = 4096, 16 * 1024 * 1024
HEADER_PREFIX_LEN = 7


@dataclass(frozen=True)
class RecordHeader:
    """§10.1. `signature` is empty until the owner signs (`sign`); a decoded header has one,
    which nothing may trust before `verify` succeeded."""

    record_id: bytes
    owner_id: bytes
    partition: str
    epoch: int
    key_source: int
    capsule: Capsule
    segment_size: int
    nonce_prefix: bytes
    signature: bytes = b""

    @classmethod
    def new(cls, record_id: bytes, owner_id: bytes, partition: str, epoch: int, capsule: Capsule,
            segment_size: int = DEFAULT_SEGMENT_SIZE, key_source: int = 0) -> "RecordHeader":
        """An unsigned header (a draft) with a fresh random nonce prefix."""
        h = cls(record_id, owner_id, partition, epoch, key_source, capsule, segment_size,
                os.urandom(7))
        h.unsigned_bytes()  # validates every field
        return h

    def unsigned_bytes(self) -> bytes:
        """Every header byte but the signature; header_len already counts the signature."""
        p = self.partition.encode("utf-8")
        if not (1 <= len(self.record_id) <= 1024 and 1 <= len(self.owner_id) <= 1024
                and 1 <= len(p) <= 255 and self.key_source in (0, 1)
                and MIN_SEGMENT <= self.segment_size <= MAX_SEGMENT
                and len(self.nonce_prefix) == 7 and 0 <= self.epoch < 2**32):
            raise InvalidParameter("record header field out of range")
        body = b"".join(struct.pack(">H", len(f)) + f for f in (self.record_id, self.owner_id, p))
        body += (struct.pack(">IB", self.epoch, self.key_source) + self.capsule.to_bytes()
                 + struct.pack(">I", self.segment_size) + self.nonce_prefix)
        total = HEADER_PREFIX_LEN + len(body) + SIGNATURE_LEN
        return MAGIC + bytes([VERSION]) + struct.pack(">H", total) + body

    def to_bytes(self) -> bytes:
        """The whole header: unsigned || owner signature (the AAD of every segment)."""
        if len(self.signature) != SIGNATURE_LEN:
            raise InvalidParameter("the record header is not signed yet")
        return self.unsigned_bytes() + self.signature

    def signed_digest(self, binding: bytes = b"") -> bytes:
        """§10.2: SHA-256(RECORD_HEADER_SIGNATURE_PREFIX || unsigned || binding)."""
        return hashlib.sha256(RECORD_HEADER_SIGNATURE_PREFIX + self.unsigned_bytes()
                              + binding).digest()

    def sign(self, owner: "SigningKey", binding: bytes = b"") -> "RecordHeader":
        """The header signed by its owner, binding `binding` (empty unless deduplicated, §10.6)."""
        return replace(self, signature=owner.sign_prehashed(self.signed_digest(binding)))

    def verify(self, owner_vk: bytes, binding: bytes = b"") -> "RecordHeader":
        """Checks the owner's signature over this header and `binding`; raises VerificationFailed."""
        if not verify_signature_prehashed(owner_vk, self.signed_digest(binding), self.signature):
            raise VerificationFailed("the record header is not signed by its owner")
        return self

    def hash(self) -> bytes:
        """SHA-256 of the whole (signed) header, which every segment signature covers."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RecordHeader":
        """Decodes exactly one header. Does not verify the signature (see `verify`)."""
        bad = Malformed("RecordHeader")
        total = cls.read_length(data[:HEADER_PREFIX_LEN])
        if total != len(data):
            raise bad
        pos = HEADER_PREFIX_LEN

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(data):
                raise bad
            pos += n
            return data[pos - n:pos]

        fields = []
        for limit in (1024, 1024, 255):
            n = struct.unpack(">H", take(2))[0]
            if not 1 <= n <= limit:
                raise bad
            fields.append(take(n))
        try:
            partition = fields[2].decode("utf-8")
        except UnicodeDecodeError:
            raise bad from None
        epoch, key_source = struct.unpack(">IB", take(5))
        if key_source not in (0, 1):
            raise bad
        capsule = Capsule.from_bytes(take(CAPSULE_LEN))
        (segment_size,) = struct.unpack(">I", take(4))
        if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
            raise bad
        nonce_prefix = take(7)
        signature = take(SIGNATURE_LEN)
        if pos != len(data):
            raise bad
        header = cls(fields[0], fields[1], partition, epoch, key_source, capsule, segment_size,
                     nonce_prefix, signature)
        if header.to_bytes() != data:
            raise bad
        return header

    @staticmethod
    def read_length(first7: bytes) -> int:
        """A reader reads 7 bytes, checks magic, version and header_len, then header_len − 7 more."""
        if len(first7) != HEADER_PREFIX_LEN or first7[:4] != MAGIC:
            raise Malformed("RecordHeader")
        if first7[4] != VERSION:
            raise Malformed(f"RecordHeader: format version {first7[4]} is refused (only "
                            f"{VERSION}, owner-signed, is read)")
        total = struct.unpack(">H", first7[5:7])[0]
        if total < HEADER_PREFIX_LEN + SIGNATURE_LEN:
            raise Malformed("RecordHeader")
        return total


def segment_digest(header_hash: bytes, index: int, last: bool, ciphertext: bytes) -> bytes:
    """§10.4: SHA-256(RECORD_SEGMENT_SIGNATURE_PREFIX || SHA-256(header) || u32be(i) || last_flag
    || C_i), C_i being the segment's ciphertext with its tag. The owner signs this digest."""
    return hashlib.sha256(RECORD_SEGMENT_SIGNATURE_PREFIX + header_hash
                          + struct.pack(">IB", index, 1 if last else 0) + ciphertext).digest()


def dem_key(kem_key: bytes) -> bytes:
    """§10.3, key_source = 0."""
    return hkdf(kem_key, DEM_KEY_INFO)


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 2**32 - 1:
        raise InvalidParameter("too many segments")
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def ciphertext_len(plaintext_len: int, segment_size: int) -> int:
    """§10.4: bytes after the header; an empty plaintext is one empty last segment."""
    segments = max(1, -(-plaintext_len // segment_size))
    return plaintext_len + segments * SEGMENT_OVERHEAD


def seal_segments(header: RecordHeader, key: bytes, owner: SigningKey, plaintext_len: int, read):
    """§10.4 writer. `read(n)` returns the next n plaintext bytes; yields C_i || sig_i.

    `header` must be signed by `owner`. The length is known in advance (as in
    the Rust client), so the final segment is sealed as last even when it is full.
    """
    aad, aead, seg = header.to_bytes(), AESGCM(key), header.segment_size
    header_hash = header.hash()
    remaining, index = plaintext_len, 0
    while True:
        n = min(remaining, seg)
        chunk = read(n)
        if len(chunk) != n:
            raise InvalidParameter("input shorter than its declared length")
        remaining -= n
        last = remaining == 0
        ct = aead.encrypt(segment_nonce(header.nonce_prefix, index, last), chunk, aad)
        yield ct + owner.sign_prehashed(segment_digest(header_hash, index, last, ct))
        if last:
            return
        index += 1


class _StreamOpener:
    """The STREAM construction alone (§10.4 without signatures): also what blobs use."""

    def __init__(self, key: bytes, nonce_prefix: bytes, aad: bytes, segment_size: int):
        self._aead, self._prefix, self._aad = AESGCM(key), nonce_prefix, aad
        self.full = segment_size + TAG_LEN

    def open(self, ct: bytes, index: int, last: bool) -> bytes:
        try:
            return self._aead.decrypt(segment_nonce(self._prefix, index, last), ct, self._aad)
        except InvalidTag:
            raise DecryptionFailed("segment does not authenticate") from None

    def open_last(self, ct: bytes, index: int) -> bytes:
        if len(ct) < TAG_LEN:
            raise Truncated("record ended before its last segment")
        try:
            return self.open(ct, index, last=True)
        except DecryptionFailed:
            # A record cut at a segment boundary ends with a full segment sealed
            # as non-last: report that as truncation.
            if len(ct) != self.full:
                raise
            try:
                self.open(ct, index, last=False)
            except DecryptionFailed:
                raise DecryptionFailed("last segment does not authenticate") from None
            raise Truncated("record ended before its last segment") from None


class _Pusher:
    """Buffers pushed bytes; a full unit is non-last only once one more byte follows it."""

    def __init__(self, unit: int):
        self._unit, self._buf, self._index, self._poisoned = unit, bytearray(), 0, False

    def _open_unit(self, unit: bytes, index: int, last: bool) -> bytes:
        raise NotImplementedError

    def push(self, data: bytes) -> list[bytes]:
        if self._poisoned:
            raise DecryptionFailed("the record already failed")
        self._buf += data
        out = []
        try:
            while len(self._buf) > self._unit:
                out.append(self._open_unit(bytes(self._buf[:self._unit]), self._index, False))
                del self._buf[:self._unit]
                self._index += 1
        except CryptoError:
            self._poisoned = True
            raise
        return out

    def finish(self) -> bytes:
        if self._poisoned:
            raise DecryptionFailed("the record already failed")
        self._poisoned = True  # single use
        rest = bytes(self._buf)
        self._buf.clear()
        return self._open_unit(rest, self._index, True)


class RecordOpener(_Pusher):
    """§10.4–10.5 reader: push ciphertext as it arrives, get plaintext back segment by segment,
    each only once its AEAD tag *and* its owner signature verified.

    The header's own signature is checked first (with `binding`, §10.6): a header its owner
    did not sign is refused before any segment is looked at.
    """

    def __init__(self, header: RecordHeader, key: bytes, owner_vk: bytes, binding: bytes = b""):
        header.verify(owner_vk, binding)
        super().__init__(header.segment_size + SEGMENT_OVERHEAD)
        self._hash, self._vk = header.hash(), owner_vk
        self._stream = _StreamOpener(key, header.nonce_prefix, header.to_bytes(),
                                     header.segment_size)

    def _open_unit(self, unit: bytes, index: int, last: bool) -> bytes:
        if last and len(unit) < SEGMENT_OVERHEAD:
            raise Truncated("record ended before its last segment")
        ct, sig = unit[:-SIGNATURE_LEN], unit[-SIGNATURE_LEN:]
        plain = self._stream.open_last(ct, index) if last else self._stream.open(ct, index, False)
        # Authentic under the record's key is not enough: every key holder (each
        # grantee) could have written it. Only the owner's signature releases it.
        if not verify_signature_prehashed(self._vk, segment_digest(self._hash, index, last, ct),
                                          sig):
            raise VerificationFailed("record segment is not signed by the record's owner")
        return plain


def open_record(record: bytes, owner_vk: bytes, key: bytes | None = None,
                kem_key: bytes | None = None, binding: bytes = b""):
    """Verifies and decrypts a whole record (header || segments). Returns (header, plaintext)."""
    header = RecordHeader.from_bytes(record[:RecordHeader.read_length(record[:HEADER_PREFIX_LEN])])
    if key is None:
        if header.key_source != 0 or kem_key is None:
            raise InvalidParameter("need the DEM key or the KEM key")
        key = dem_key(kem_key)
    opener = RecordOpener(header, key, owner_vk, binding)
    body = opener.push(record[len(header.to_bytes()):])
    body.append(opener.finish())
    return header, b"".join(body)


# --- Deduplicated records (§10.6; crates/dedup/README.md) ---------------------

BLOB_MAGIC = b"SPHB"
BLOB_HEADER_LEN = 9
WRAPPED_KEY_LEN = 60


def dedup_binding(blob_id: bytes, wrapped_content_key: bytes) -> bytes:
    """§10.6: what the owner's header signature binds besides the header.

    Empty for a record with its own ciphertext; for a deduplicated one
    u16be(len(blob_id)) || blob_id || wrapped_content_key.
    """
    if not blob_id:
        return b""
    return struct.pack(">H", len(blob_id)) + blob_id + wrapped_content_key


def unwrap_content_key(kem_key: bytes, wrapped: bytes, aad: bytes) -> bytes:
    """The blob's content key, wrapped under the record's KEM key (§10.6: aad = the record
    header's unsigned bytes)."""
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise Malformed("wrapped content key must be 60 bytes")
    key = hkdf(kem_key, b"SeSPHR-v1 content key wrap", 32)
    try:
        return AESGCM(key).decrypt(wrapped[:12], wrapped[12:], aad)
    except InvalidTag:
        raise DecryptionFailed("wrapped content key does not authenticate") from None


def wrap_content_key(kem_key: bytes, content_key: bytes, aad: bytes) -> bytes:
    """Inverse of unwrap_content_key (random 12-byte nonce); for tests."""
    nonce = os.urandom(12)
    key = hkdf(kem_key, b"SeSPHR-v1 content key wrap", 32)
    return nonce + AESGCM(key).encrypt(nonce, content_key, aad)


class _BlobStream(_Pusher):
    def __init__(self, raw: bytes, content_key: bytes):
        if len(raw) != BLOB_HEADER_LEN or raw[:4] != BLOB_MAGIC or raw[4] != 1:
            raise Malformed("blob header")
        (segment_size,) = struct.unpack(">I", raw[5:9])
        if not 4096 <= segment_size <= 16 << 20:
            raise Malformed("blob segment size out of range")
        key = hkdf(content_key, b"SeSPHR-v1 blob key" + raw, 32)
        nonce_prefix = hkdf(content_key, b"SeSPHR-v1 blob nonce prefix" + raw, 7)
        self._stream = _StreamOpener(key, nonce_prefix, raw, segment_size)
        super().__init__(self._stream.full)

    def _open_unit(self, unit: bytes, index: int, last: bool) -> bytes:
        return self._stream.open_last(unit, index) if last else self._stream.open(unit, index, False)


class BlobOpener:
    """Push a deduplicated blob as it arrives; get authenticated plaintext. (Blobs carry no
    owner signature: the owner's header signature binds the blob id, SHA-256 of the blob,
    which the reader checks at the end, §10.6.)"""

    def __init__(self, content_key: bytes):
        self._ck = content_key
        self._head = bytearray()
        self._inner: _BlobStream | None = None

    def push(self, data: bytes) -> list[bytes]:
        if self._inner is None:
            need = BLOB_HEADER_LEN - len(self._head)
            self._head += data[:need]
            data = data[need:]
            if len(self._head) < BLOB_HEADER_LEN:
                return []
            self._inner = _BlobStream(bytes(self._head), self._ck)
        return self._inner.push(data)

    def finish(self) -> bytes:
        if self._inner is None:
            raise Truncated("blob ended inside its header")
        return self._inner.finish()


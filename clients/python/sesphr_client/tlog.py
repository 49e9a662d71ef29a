"""The audit log as a transparency log, checked on the client.

AccessPolicy's audit entries are the leaves of a Merkle tree (RFC 9162 §2.1);
it publishes signed tree heads ("checkpoints", shaped like C2SP
tlog-checkpoint), which witnesses (the re-encryption nodes and CloudStorage)
cosign once they saw each one extend the last. This module is what a client
needs to believe none of it on trust, written from those specifications:

    leaf hash      SHA-256(0x00 || d)          node hash  SHA-256(0x01 || l || r)
    leaf data d    0x01 || salt (16 bytes) || canonical entry bytes
    canonical      seq u64be || time i64be || for actor, action, owner_id,
                   partition, subject, record_id, outcome, detail:
                   u32be(len) || UTF-8
    body           origin "\\n" size "\\n" hex(root) "\\n" "time " time "\\n"
    log signature  ECDSA-P256-SHA256(log key, "sesphr-audit-checkpoint/v1\\n" || body)
    cosignature    ECDSA-P256-SHA256(witness key, "sesphr-audit-cosignature/v1\\n"
                   || "witness " name "\\n" || "time " wtime "\\n" || body)
    signatures     r || s, 64 bytes, low-s only
    public keys    SEC1 compressed points (33 bytes; 66 hex digits in files)

Inclusion and consistency proofs are verified step by step as RFC 9162
§2.1.3.2 and §2.1.4.2 write them; every check fails with an exception that
says what did not hold, never with a silent False.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

HASH_LEN = 32
# A tree of up to 2^64 leaves needs at most 64 hashes in an inclusion proof
# and 65 in a consistency proof.
MAX_PROOF_LEN = 65
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 33
MAX_NAME_LEN = 128
SALT_LEN = 16
LEAF_VERSION = 0x01
CHECKPOINT_CONTEXT = b"sesphr-audit-checkpoint/v1\n"
COSIGNATURE_CONTEXT = b"sesphr-audit-cosignature/v1\n"
# The order of the P-256 group.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
U64_MAX = (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
ENTRY_FIELDS = ("actor", "action", "owner_id", "partition", "subject", "record_id", "outcome",
                "detail")


class TlogError(Exception):
    """A proof, checkpoint, signature or key that does not hold, with the reason."""


class ProofError(TlogError):
    pass


class CheckpointError(TlogError):
    pass


class Inconsistency(TlogError):
    """A checkpoint that cannot follow the one pinned: the log was truncated, rewritten or
    forked relative to what this client saw before."""


# RFC 9162 §2.1.1 hashing ----------------------------------------------------------------------
def empty_root() -> bytes:
    """MTH({}) = SHA-256 of the empty string."""
    return hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def tree_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes, by the recursive definition (for tests and tools)."""
    if not leaves:
        return empty_root()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(tree_root(leaves[:k]), tree_root(leaves[k:]))


def inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]) over leaf hashes (for tests and tools)."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ProofError(f"leaf index {index} is not below tree size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return inclusion_path(index, leaves[:k]) + [tree_root(leaves[k:])]
    return inclusion_path(index - k, leaves[k:]) + [tree_root(leaves[:k])]


def consistency_path(first: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) over leaf hashes (for tests and tools)."""
    n = len(leaves)
    if not 0 < first <= n:
        raise ProofError(f"sizes {first} and {n} are not 0 < first <= second")

    def subproof(m: int, d: list[bytes], whole: bool) -> list[bytes]:
        if m == len(d):
            return [] if whole else [tree_root(d)]
        k = _split(len(d))
        if m <= k:
            return subproof(m, d[:k], whole) + [tree_root(d[k:])]
        return subproof(m - k, d[k:], False) + [tree_root(d[:k])]

    return subproof(first, leaves, True)


def _inclusion_len(index: int, size: int) -> int:
    """len(PATH(index, D[size])), by the recursion of §2.1.3.1."""
    length = 0
    while size > 1:
        k = _split(size)
        if index >= k:
            index, size = index - k, size - k
        else:
            size = k
        length += 1
    return length


def _consistency_len(first: int, second: int) -> int:
    """len(PROOF(first, D[second])) for 0 < first < second, by the recursion of §2.1.4.1."""
    length, whole = 0, True
    while first != second:
        k = _split(second)
        if first <= k:
            second = k
        else:
            first, second, whole = first - k, second - k, False
        length += 1
    return length + (0 if whole else 1)


def _hashes(proof, what: str) -> list[bytes]:
    out = [bytes(p) for p in proof]
    if len(out) > MAX_PROOF_LEN:
        raise ProofError(f"{what} has {len(out)} hashes, more than any tree needs")
    for p in out:
        if len(p) != HASH_LEN:
            raise ProofError(f"{what} has a hash of {len(p)} bytes, not {HASH_LEN}")
    return out


def verify_inclusion(index: int, size: int, leaf: bytes, proof, root: bytes) -> None:
    """RFC 9162 §2.1.3.2: `proof` shows leaf hash `leaf` at `index` in the tree of `size`
    leaves whose root is `root`; raises ProofError otherwise."""
    proof = _hashes(proof, "inclusion proof")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    want = _inclusion_len(index, size)
    if len(proof) != want:
        raise ProofError(f"inclusion proof of leaf {index} in a tree of {size} has "
                         f"{len(proof)} hashes, {want} expected")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root of the "
                         f"tree of {size}")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof) -> None:
    """RFC 9162 §2.1.4.2: `proof` shows the tree of `first` leaves (root `first_root`) is a
    prefix of the tree of `second` leaves (root `second_root`); equal sizes need equal roots
    and an empty proof. Raises ProofError otherwise."""
    proof = _hashes(proof, "consistency proof")
    if not 0 < first <= second:
        raise ProofError(f"sizes {first} and {second} are not 0 < first <= second")
    if first == second:
        if proof:
            raise ProofError(f"consistency proof between equal sizes {first} must be empty")
        if first_root != second_root:
            raise ProofError(f"two different roots at size {first}")
        return
    # Step 1: an empty path proves nothing.
    if not proof:
        raise ProofError(f"empty consistency proof from {first} to {second}")
    want = _consistency_len(first, second)
    if len(proof) != want:
        raise ProofError(f"consistency proof from {first} to {second} has {len(proof)} hashes, "
                         f"{want} expected")
    # Step 2: a power-of-two first tree is a complete subtree, its root the path's start.
    if first & (first - 1) == 0:
        proof = [first_root] + proof
    # Steps 3-4.
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 5-6.
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0 or fr != first_root or sr != second_root:
        raise ProofError(f"consistency proof does not show the tree of {first} to be a prefix "
                         f"of the tree of {second}")


# Audit entries as leaves ----------------------------------------------------------------------
def canonical_bytes(seq: int, time: int, fields) -> bytes:
    """The entry's canonical encoding (the hash chain's and the leaf's)."""
    fields = list(fields)
    if len(fields) != len(ENTRY_FIELDS):
        raise ValueError(f"an audit entry has {len(ENTRY_FIELDS)} text fields")
    out = [struct.pack(">Qq", seq, time)]
    for f in fields:
        b = f.encode("utf-8")
        out.append(struct.pack(">I", len(b)) + b)
    return b"".join(out)


def entry_leaf_data(entry) -> bytes:
    """Leaf data d of an audit entry (a proto AuditEntry or anything with its fields):
    0x01 || salt || canonical bytes."""
    salt = bytes(entry.salt)
    if len(salt) != SALT_LEN:
        raise TlogError(f"audit entry {entry.seq}: salt of {len(salt)} bytes, not {SALT_LEN}")
    fields = [getattr(entry, f) for f in ENTRY_FIELDS]
    return bytes([LEAF_VERSION]) + salt + canonical_bytes(entry.seq, entry.time, fields)


def entry_leaf_hash(entry) -> bytes:
    return leaf_hash(entry_leaf_data(entry))


def entry_leaf_index(entry) -> int:
    """Entry seq's leaf index, seq - 1; the entry must say the same."""
    if entry.seq < 1:
        raise TlogError(f"audit entry with seq {entry.seq}: sequence numbers start at 1")
    index = entry.seq - 1
    if getattr(entry, "leaf_index", index) != index:
        raise TlogError(f"audit entry {entry.seq} claims leaf index {entry.leaf_index}, "
                        f"not {index}")
    return index


# Keys and signatures --------------------------------------------------------------------------
class PublicKey:
    """An ECDSA P-256 verifying key: the log's or a witness's."""

    def __init__(self, raw: bytes):
        raw = bytes(raw)
        # Compressed only (tag 2 or 3): one key, one encoding.
        if len(raw) != PUBLIC_KEY_LEN or raw[0] not in (2, 3):
            raise CheckpointError("public key is not a SEC1 compressed P-256 point (66 hex "
                                  "digits starting 02 or 03)")
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise CheckpointError("public key is not a point of P-256") from None
        self.raw = raw

    @classmethod
    def from_hex(cls, text: str) -> "PublicKey":
        try:
            raw = bytes.fromhex(text.strip())
        except (ValueError, AttributeError):
            raise CheckpointError("public key is not hex") from None
        return cls(raw)

    def hex(self) -> str:
        return self.raw.hex()

    def __eq__(self, other) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.hex()})"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` (r || s, low s) is this key's over `message`."""
        signature = bytes(signature)
        if len(signature) != SIGNATURE_LEN:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        # Only the low-s form: signatures are not malleable.
        if not (0 < r < P256_N and 0 < s <= P256_N // 2):
            return False
        try:
            self._key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An ECDSA P-256 signing key in the key-file format (64 hex digits of the scalar); for
    tests and tools: clients only verify."""

    def __init__(self, scalar: int):
        if not 0 < scalar < P256_N:
            raise CheckpointError("signing key is not a scalar of P-256")
        self._key = ec.derive_private_key(scalar, ec.SECP256R1())

    @classmethod
    def from_hex(cls, text: str) -> "SigningKey":
        text = text.strip()
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise CheckpointError("signing key is not 64 hex digits")
        return cls(int(text, 16))

    def public_key(self) -> PublicKey:
        return PublicKey(self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint))

    def sign(self, message: bytes) -> bytes:
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        if s > P256_N // 2:
            s = P256_N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# Checkpoints ----------------------------------------------------------------------------------
def check_name(name: str, what: str) -> str:
    """An origin or witness name: 1 to 128 printable ASCII bytes, no spaces."""
    if (not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LEN
            or not all(0x21 <= ord(ch) <= 0x7E for ch in name)):
        raise CheckpointError(f"{what} {name!r} is not 1 to {MAX_NAME_LEN} printable ASCII "
                              "characters without spaces")
    return name


_SIZE = re.compile(r"0|[1-9][0-9]*")
_TIME = re.compile(r"0|-?[1-9][0-9]*")
_ROOT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log `origin` had `size` entries with `root` at `time` (unix s)."""

    origin: str
    size: int
    root: bytes
    time: int

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{self.root.hex()}\ntime {self.time}\n"

    @classmethod
    def parse(cls, body: str) -> "Checkpoint":
        """Exactly the bytes `body()` writes: no leading zeros or signs, lowercase hex."""
        if not isinstance(body, str) or not body.endswith("\n"):
            raise CheckpointError("malformed checkpoint: it must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) != 4:
            raise CheckpointError(f"malformed checkpoint: {len(lines)} lines, not 4")
        origin, size, root, time_line = lines
        check_name(origin, "checkpoint origin")
        if not _SIZE.fullmatch(size) or int(size) > U64_MAX:
            raise CheckpointError(f"malformed checkpoint size {size!r}")
        if not _ROOT.fullmatch(root):
            raise CheckpointError("malformed checkpoint root: not 64 lowercase hex digits")
        if not time_line.startswith("time "):
            raise CheckpointError("malformed checkpoint: no time line")
        t = time_line.removeprefix("time ")
        if not _TIME.fullmatch(t) or not I64_MIN <= int(t) <= I64_MAX:
            raise CheckpointError(f"malformed checkpoint time {t!r}")
        cp = cls(origin, int(size), bytes.fromhex(root), int(t))
        if cp.body() != body:
            raise CheckpointError("malformed checkpoint: not in its canonical form")
        return cp

    def signed_message(self) -> bytes:
        return CHECKPOINT_CONTEXT + self.body().encode("ascii")

    def cosigned_message(self, witness: str, time: int) -> bytes:
        head = f"witness {witness}\ntime {time}\n".encode("ascii")
        return COSIGNATURE_CONTEXT + head + self.body().encode("ascii")


@dataclass(frozen=True)
class Cosignature:
    witness: str
    time: int
    signature: bytes


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with the log's signature and the cosignatures it came with."""

    checkpoint: Checkpoint
    signature: bytes
    cosignatures: tuple[Cosignature, ...] = ()


def sign_checkpoint(log: SigningKey, cp: Checkpoint) -> bytes:
    return log.sign(cp.signed_message())


def cosign(witness_key: SigningKey, name: str, time: int, cp: Checkpoint) -> Cosignature:
    return Cosignature(name, time, witness_key.sign(cp.cosigned_message(name, time)))


def verify_checkpoint(log_key: PublicKey, cp: Checkpoint, signature: bytes) -> None:
    if not log_key.verify(cp.signed_message(), signature):
        raise CheckpointError(f"the log signature on the checkpoint of size {cp.size} does not "
                              "verify under the log key")


def verify_cosignature(key: PublicKey, cp: Checkpoint, c: Cosignature) -> None:
    if not key.verify(cp.cosigned_message(c.witness, c.time), c.signature):
        raise CheckpointError(f"witness {c.witness}'s cosignature on the checkpoint of size "
                              f"{cp.size} does not verify")


def verify_witnessed(log_key: PublicKey, signed: SignedCheckpoint,
                     witnesses: dict[str, PublicKey], quorum: int) -> list[str]:
    """Accepts `signed` only if the log key signed it and at least `quorum` of the named
    `witnesses` validly cosigned it; returns their names. Cosignatures by unknown names, a
    second one by the same witness and ones that do not verify do not count."""
    verify_checkpoint(log_key, signed.checkpoint, signed.signature)
    ok: list[str] = []
    refused: list[str] = []
    for c in signed.cosignatures:
        if c.witness in ok or c.witness not in witnesses:
            continue
        try:
            verify_cosignature(witnesses[c.witness], signed.checkpoint, c)
        except CheckpointError:
            refused.append(c.witness)
            continue
        ok.append(c.witness)
    if len(ok) < quorum:
        bad = f" (invalid: {', '.join(refused)})" if refused else ""
        raise CheckpointError(f"witness quorum not met: {len(ok)} of the {quorum} required "
                              f"witnesses cosigned the checkpoint of size "
                              f"{signed.checkpoint.size}{bad}")
    return ok


def check_advance(pinned: Checkpoint, new: Checkpoint, proof) -> None:
    """Accepts `new` after `pinned` iff it is the same tree or `proof` proves `pinned` a prefix
    of it; a pin of size 0 accepts any checkpoint of the same origin. Raises Inconsistency."""
    if pinned.origin != new.origin:
        raise Inconsistency(f"the log's origin changed from {pinned.origin} to {new.origin}")
    if new.size < pinned.size:
        raise Inconsistency(f"the log shrank from {pinned.size} to {new.size} entries "
                            "(truncated or restored from an older copy)")
    if pinned.size == 0:
        return
    if new.size == pinned.size:
        if new.root != pinned.root:
            raise Inconsistency(f"the log forked at size {new.size}: root {pinned.root.hex()} "
                                f"was pinned, {new.root.hex()} is shown now")
        return
    try:
        verify_consistency(pinned.size, new.size, pinned.root, new.root, proof)
    except ProofError as e:
        raise Inconsistency(f"the log at size {new.size} does not extend the pinned size "
                            f"{pinned.size}: {e}") from None

"""The SeSPHR flows over gRPC + mTLS, mirroring the Rust SDK (crates/client).

Same `mesh.toml`, same profile directory (a profile enrolled here works
with the Rust `sesphr` CLI and vice versa), same wire calls in the same
order: enroll, upload, get, grant, revoke, list, grants.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import crypto

_GEN = Path(__file__).resolve().parents[1] / "gen"
if not (_GEN / "sesphr" / "v1" / "srs_pb2.py").exists():
    raise ImportError(f"gRPC stubs missing in {_GEN}: run `python {_GEN.parent / 'gen_stubs.py'}` first")
if str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))

from sesphr.v1 import access_policy_pb2 as ap_pb  # noqa: E402
from sesphr.v1 import access_policy_pb2_grpc as ap_grpc  # noqa: E402
from sesphr.v1 import cloud_storage_pb2 as cs_pb  # noqa: E402
from sesphr.v1 import cloud_storage_pb2_grpc as cs_grpc  # noqa: E402
from sesphr.v1 import common_pb2  # noqa: E402
from sesphr.v1 import srs_pb2  # noqa: E402
from sesphr.v1 import srs_pb2_grpc  # noqa: E402

CALL_TIMEOUT = 30.0
MAX_MESSAGE = 8 << 20
ROLES = ["patient", "doctor", "nurse", "pharmacist", "insurer", "researcher", "family", "friend",
         "emergency"]
USER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PARTITION = re.compile(r"^[a-z0-9-]{1,32}$")


class ClientError(Exception):
    """A failure, with one readable line."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


def _rpc(service: str, err: grpc.RpcError) -> ClientError:
    code = err.code() if hasattr(err, "code") else None
    name = code.name.lower().replace("_", " ") if code else "error"
    details = err.details() if hasattr(err, "details") else str(err)
    return ClientError(f"{service}: {name}: {details}", code)


def role_value(role: str) -> int:
    if role not in ROLES:
        raise ClientError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    return common_pb2.Role.Value(f"ROLE_{role.upper()}")


def role_name(value: int) -> str:
    name = common_pb2.Role.Name(value) if value in common_pb2.Role.values() else "ROLE_UNKNOWN"
    return name.removeprefix("ROLE_").lower()


def spiffe_id(trust_domain: str, role: str, user_id: str) -> str:
    if role == "patient":
        return f"spiffe://{trust_domain}/patient/{user_id}"
    return f"spiffe://{trust_domain}/practitioner/{role}/{user_id}"


def _check_user_id(user_id: str, what: str = "user id") -> None:
    if not USER_ID.match(user_id):
        raise ClientError(f"{user_id!r} is not a valid {what}")


def _check_partition(partition: str) -> None:
    if not PARTITION.match(partition):
        raise ClientError(f"{partition!r} is not a valid partition name ([a-z0-9-]{{1,32}})")


# mesh.toml ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MeshFile:
    trust_domain: str
    ca: Path
    cloud_storage: str
    srs: str
    access_policy: str
    enrollment_token: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MeshFile":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ClientError(f"{path}: {e}") from None
        known = {"trust_domain", "ca", "enrollment_token", "cloud_storage", "srs", "access_policy"}
        if set(data) - known:
            raise ClientError(f"{path}: unknown keys {sorted(set(data) - known)}")
        try:
            ca = Path(data["ca"])
            if not ca.is_absolute():  # relative to the mesh file, as in the Rust CLI
                ca = path.parent / ca
            return cls(data["trust_domain"], ca, data["cloud_storage"], data["srs"],
                       data["access_policy"], data.get("enrollment_token"))
        except KeyError as e:
            raise ClientError(f"{path}: missing {e.args[0]}") from None


def grpc_target(url: str) -> str:
    """`https://host:port` → `host:port` (the mesh speaks only TLS)."""
    if not url.startswith("https://"):
        raise ClientError(f"{url!r} must start with https:// (the mesh speaks only TLS)")
    return url.removeprefix("https://").rstrip("/")


def secure_channel(url: str, ca_pem: bytes, key_pem: bytes | None = None,
                   cert_pem: bytes | None = None) -> grpc.Channel:
    """An mTLS channel (or TLS-only when no key/cert: enrollment, refusal tests)."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                         certificate_chain=cert_pem)
    return grpc.secure_channel(grpc_target(url), creds, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ])


# The profile directory -------------------------------------------------------------------
def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _write_public(path: Path, text: str) -> None:
    """Like the Rust `write_public`: a temporary file, fsync, rename, mode 0644."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    os.chmod(path, 0o644)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    """A bare key where TOML allows one (as the Rust `toml` crate writes), else quoted: a user
    id like `dr.bob` must stay one key, not a dotted path."""
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_value(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise TypeError(f"unsupported TOML value {v!r}")
    return str(v) if isinstance(v, int) else _toml_str(v)


def _toml_tables(tables: dict[tuple[str, ...], dict]) -> str:
    """`[a.b]` tables of `key = value` lines, in the order given."""
    parts = []
    for path, fields in tables.items():
        lines = [f"[{'.'.join(_toml_key(p) for p in path)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in fields.items() if v is not None]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _load_toml(path: Path, missing):
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return missing()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ClientError(f"{path}: {e}") from None


class Profile:
    """`--home DIR`: profile.toml, master.key, tls.key, tls.pem, ca.pem, epochs.toml,
    known_keys.toml (pinned user keys) and grants.toml (the owner's grant ledger)."""

    def __init__(self, home: str | os.PathLike):
        self.home = Path(home)
        path = self.home / "profile.toml"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ClientError(f"no profile in {self.home}; run `enroll` first (or pass --home / "
                              "SESPHR_HOME)") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ClientError(f"{path}: {e}") from None
        self.user_id: str = data["user_id"]
        self.role: str = data["role"]
        self.trust_domain: str = data["trust_domain"]
        if self.role not in ROLES:
            raise ClientError(f"{path}: unknown role {self.role!r}")

    @staticmethod
    def exists(home: Path) -> bool:
        return (Path(home) / "profile.toml").exists()

    @classmethod
    def create(cls, home: Path, user_id: str, role: str, trust_domain: str,
               master: crypto.MasterSecret, tls_key_pem: bytes, cert_pem: bytes,
               ca_pem: bytes) -> "Profile":
        home = Path(home)
        if cls.exists(home):
            raise ClientError(f"{home} already holds a profile; use another --home")
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        _write(home / "master.key", master.raw.hex().encode(), 0o600)
        _write(home / "tls.key", tls_key_pem, 0o600)
        _write(home / "tls.pem", cert_pem, 0o644)
        _write(home / "ca.pem", ca_pem, 0o644)
        # profile.toml last: its presence means the profile is complete.
        text = (f"user_id = {_toml_str(user_id)}\nrole = {_toml_str(role)}\n"
                f"trust_domain = {_toml_str(trust_domain)}\n")
        _write(home / "profile.toml", text.encode(), 0o644)
        return cls(home)

    def master_secret(self) -> crypto.MasterSecret:
        path = self.home / "master.key"
        try:
            return crypto.MasterSecret(bytes.fromhex(path.read_text().strip()))
        except (OSError, ValueError, crypto.CryptoError):
            raise ClientError(f"{path} is not a master secret") from None

    def tls_files(self) -> tuple[bytes, bytes, bytes]:
        """(ca, key, cert) PEM bytes."""
        return tuple((self.home / n).read_bytes() for n in ("ca.pem", "tls.key", "tls.pem"))

    def epochs(self) -> dict[str, int]:
        data = _load_toml(self.home / "epochs.toml", dict)
        if not all(isinstance(v, int) and 0 <= v < 2**32 for v in data.values()):
            raise ClientError(f"{self.home / 'epochs.toml'}: epochs must be u32 integers")
        return dict(data)

    def current_epoch(self, partition: str) -> int:
        return int(self.epochs().get(partition, 0))

    def set_epoch(self, partition: str, epoch: int) -> None:
        """Saves `epoch` as the one new records of `partition` use (as the Rust client does)."""
        all_ = self.epochs()
        all_[partition] = epoch
        _write_public(self.home / "epochs.toml",
                      "".join(f"{_toml_key(p)} = {e}\n" for p, e in sorted(all_.items())))


# Pinned user keys (crates/client/src/pins.rs) ----------------------------------------------
FINGERPRINT_DST = b"SESPHR-V1-USER-KEY-FINGERPRINT"


def fingerprint(user_id: str, role: str, pre_public_key: bytes, verifying_key: bytes) -> str:
    """SHA-256(DST || u16be(len id) || id || role || 0x00 || pre_pk || vk), first 16 bytes as
    eight dash-separated groups of four hex digits: what two people read out to each other."""
    uid = user_id.encode()
    d = hashlib.sha256(FINGERPRINT_DST + struct.pack(">H", len(uid)) + uid + role.encode()
                       + b"\x00" + pre_public_key + verifying_key).digest()[:16]
    return "-".join(d[i:i + 2].hex() for i in range(0, 16, 2))


@dataclass(frozen=True)
class UserKeys:
    """A user's keys as the directory (the SRS) presented them, checked for well-formedness."""

    user_id: str
    role: str
    pre_public_key: bytes  # 33 bytes, SEC1 compressed
    verifying_key: bytes  # 33 bytes, SEC1 compressed

    @classmethod
    def from_proto(cls, info) -> "UserKeys":
        def bad(what: str) -> ClientError:
            return ClientError(f"verification failed: the SRS returned a malformed {what} for "
                               f"{info.user_id}")
        if not USER_ID.match(info.user_id):
            raise bad("user id")
        role = role_name(info.role)
        if role not in ROLES:
            raise bad("role")
        for what, key in (("public key", info.pre_public_key),
                          ("verifying key", info.verifying_key)):
            try:
                crypto.decode_point(key, what)
            except crypto.Malformed:
                raise bad(what) from None
        return cls(info.user_id, role, bytes(info.pre_public_key), bytes(info.verifying_key))

    def fingerprint(self) -> str:
        return fingerprint(self.user_id, self.role, self.pre_public_key, self.verifying_key)

    def pin(self) -> dict:
        return {"role": self.role, "pre_public_key": self.pre_public_key.hex(),
                "verifying_key": self.verifying_key.hex(), "fingerprint": self.fingerprint()}


class KeyChanged(ClientError):
    """The SRS presents other keys for a user than the ones this profile pinned."""

    def __init__(self, user_id: str, pinned: str, presented: str):
        super().__init__(
            f"the SRS presents other keys for {user_id} than the ones you pinned (pinned {pinned}, "
            f"presented {presented}); if {user_id} really has new keys, check the fingerprint "
            f"with them and run `trust {user_id} --fingerprint {presented}` (sesphr or sesphr-py)")
        self.user_id, self.pinned, self.presented = user_id, pinned, presented


PIN_FIELDS = ("role", "pre_public_key", "verifying_key", "fingerprint")


class PinStore:
    """DIR/known_keys.toml: one table per user id with the four PIN_FIELDS (the Rust format)."""

    def __init__(self, home: Path):
        self.path = Path(home) / "known_keys.toml"

    def load(self) -> dict[str, dict]:
        data = _load_toml(self.path, dict)
        for uid, pin in data.items():
            if (not isinstance(pin, dict) or set(pin) != set(PIN_FIELDS)
                    or not all(isinstance(v, str) for v in pin.values())):
                raise ClientError(f"{self.path}: the pin of {uid} is malformed")
        return data

    def save(self, all_: dict[str, dict]) -> None:
        _write_public(self.path, _toml_tables(
            {(uid,): {f: all_[uid][f] for f in PIN_FIELDS} for uid in sorted(all_)}))

    def status(self, keys: UserKeys) -> tuple[str, str | None]:
        """("pinned", fp), ("new", None) or ("changed", fingerprint of the pinned keys)."""
        pin = self.load().get(keys.user_id)
        if pin is None:
            return "new", None
        if pin == keys.pin():
            return "pinned", pin["fingerprint"]
        return "changed", pin["fingerprint"]

    def check_or_pin(self, keys: UserKeys) -> str:
        """Accepts pinned keys, pins a user's first keys (trust on first use), refuses a change."""
        status, pinned = self.status(keys)
        if status == "new":
            self.pin(keys)
        elif status == "changed":
            raise KeyChanged(keys.user_id, pinned, keys.fingerprint())
        return status

    def pinned_verifying_key(self, user_id: str) -> bytes | None:
        pin = self.load().get(user_id)
        if pin is None:
            return None
        try:
            vk = bytes.fromhex(pin["verifying_key"])
            crypto.decode_point(vk, "verifying key")
            return vk
        except (ValueError, crypto.Malformed):
            raise ClientError(f"{self.path}: the verifying key pinned for {user_id} is "
                              "malformed") from None

    def pinned_fingerprint(self, user_id: str) -> str | None:
        pin = self.load().get(user_id)
        return pin["fingerprint"] if pin else None

    def pin(self, keys: UserKeys) -> None:
        all_ = self.load()
        all_[keys.user_id] = keys.pin()
        self.save(all_)


# The grant ledger (crates/client/src/ledger.rs) -----------------------------------------------
LEDGER_FIELDS = ("role", "epoch_min", "not_before", "expires_at", "granted_at", "revoked_at")
_LEDGER_OPTIONAL = {"expires_at", "revoked_at"}


class Ledger:
    """DIR/grants.toml, partition → grantee → entry: the owner's own record of her grants.

    A grant is entered once AccessPolicy acknowledged exactly what was asked; a revocation
    is entered *before* AccessPolicy is asked, so that a lying or failing server cannot keep
    a revoked grantee in the next rotation, which follows this ledger only.
    """

    def __init__(self, home: Path):
        self.path = Path(home) / "grants.toml"

    @classmethod
    def create(cls, home: Path) -> None:
        """An empty ledger (at enrollment)."""
        cls(home).save({})

    def load(self) -> dict[str, dict[str, dict]]:
        def missing():
            raise ClientError(f"{self.path} is missing: this profile has no grant ledger, so it "
                              "cannot tell who may receive kfrags")
        data = _load_toml(self.path, missing)
        for partition, grantees in data.items():
            if not isinstance(grantees, dict):
                raise ClientError(f"{self.path}: {partition} is not a table of grantees")
            for grantee, e in grantees.items():
                ok = (isinstance(e, dict) and set(e) <= set(LEDGER_FIELDS)
                      and set(LEDGER_FIELDS) - _LEDGER_OPTIONAL <= set(e)
                      and isinstance(e["role"], str)
                      and all(isinstance(e[k], int) and not isinstance(e[k], bool)
                              for k in LEDGER_FIELDS[1:] if k in e)
                      and 0 <= e["epoch_min"] < 2**32)
                if not ok:
                    raise ClientError(f"{self.path}: the entry of {partition} → {grantee} is "
                                      "malformed")
        return data

    def save(self, all_: dict[str, dict[str, dict]]) -> None:
        _write_public(self.path, _toml_tables({
            (p, g): {f: all_[p][g].get(f) for f in LEDGER_FIELDS}
            for p in sorted(all_) for g in sorted(all_[p])}))

    def record_grant(self, grant, now: int) -> None:
        """Enters an acknowledged grant (an AccessGrant), replacing an earlier entry."""
        all_ = self.load()
        all_.setdefault(grant.partition, {})[grant.grantee_id] = {
            "role": role_name(grant.grantee_role), "epoch_min": grant.epoch_min,
            "not_before": grant.not_before,
            "expires_at": grant.expires_at if grant.HasField("expires_at") else None,
            "granted_at": now, "revoked_at": None}
        self.save(all_)

    def record_revoke(self, partition: str, grantee: str, now: int) -> None:
        """Marks the grant revoked; also for a grantee the ledger never saw."""
        all_ = self.load()
        entry = all_.setdefault(partition, {}).setdefault(grantee, {
            "role": "", "epoch_min": 0, "not_before": 0, "granted_at": 0})
        entry["revoked_at"] = now
        self.save(all_)

    def active(self, partition: str, now: int) -> list[str]:
        """Grantees of `partition` neither revoked nor expired at `now`."""
        return sorted(g for g, e in self.load().get(partition, {}).items()
                      if e.get("revoked_at") is None
                      and (e.get("expires_at") is None or e["expires_at"] > now))


# Enrollment --------------------------------------------------------------------------------
def make_csr() -> tuple[bytes, bytes]:
    """An EC P-256 TLS key and a PKCS#10 CSR for it: (csr DER, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sesphr-client")]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return csr.public_bytes(serialization.Encoding.DER), key_pem


def enroll(mesh: MeshFile, home: Path, user_id: str, role: str, token: str) -> Profile:
    """Generates the master secret and a TLS key locally; the SRS gets a CSR and public keys."""
    _check_user_id(user_id)
    role_enum = role_value(role)
    if Profile.exists(home):
        raise ClientError(f"{home} already holds a profile; use another --home")
    ca_pem = mesh.ca.read_bytes()
    master = crypto.MasterSecret.generate()
    csr_der, key_pem = make_csr()
    with secure_channel(mesh.srs, ca_pem) as ch:  # no client certificate yet
        try:
            resp = srs_pb2_grpc.SrsStub(ch).Enroll(srs_pb2.EnrollRequest(
                enrollment_token=token, user_id=user_id, role=role_enum, csr_der=csr_der,
                pre_public_key=master.receiving_keys().public_bytes(),
                verifying_key=master.signing_key().verifying_key_bytes()), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise _rpc("SRS", e) from None
    expected = spiffe_id(mesh.trust_domain, role, user_id)
    if resp.spiffe_id != expected:
        raise ClientError(f"the SRS issued a certificate for {resp.spiffe_id} instead of {expected}")
    profile = Profile.create(home, user_id, role, mesh.trust_domain, master, key_pem,
                             resp.certificate_pem.encode(), ca_pem)
    Ledger.create(home)  # an empty grants.toml, as the Rust enroll writes
    return profile


def own_fingerprint(profile: Profile) -> str:
    """The fingerprint of a profile's own keys: what its user reads out to those who grant to
    it or read its records."""
    master = profile.master_secret()
    return fingerprint(profile.user_id, profile.role, master.receiving_keys().public_bytes(),
                       master.signing_key().verifying_key_bytes())


# Sessions -----------------------------------------------------------------------------------
def unix_now() -> int:
    return int(time.time())


class Session:
    """One user's mTLS connections to the three services."""

    def __init__(self, mesh: MeshFile, home: str | os.PathLike):
        self.profile = Profile(home)
        if self.profile.trust_domain != mesh.trust_domain:
            raise ClientError(f"profile is for trust domain {self.profile.trust_domain}, mesh file "
                              f"for {mesh.trust_domain}")
        self.master = self.profile.master_secret()
        self.pins = PinStore(self.profile.home)
        ca, key, cert = self.profile.tls_files()
        self._channels = [secure_channel(u, ca, key, cert)
                          for u in (mesh.cloud_storage, mesh.srs, mesh.access_policy)]
        self.cloud = cs_grpc.CloudStorageStub(self._channels[0])
        self.srs = srs_pb2_grpc.SrsStub(self._channels[1])
        self.policy = ap_grpc.AccessPolicyStub(self._channels[2])

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def user_id(self) -> str:
        return self.profile.user_id

    def _call(self, service: str, method, request):
        try:
            return method(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise _rpc(service, e) from None

    def lookup(self, user_id: str):
        """The raw `Srs/GetUser` answer, unchecked and unpinned."""
        return self._call("SRS", self.srs.GetUser, srs_pb2.GetUserRequest(user_id=user_id))

    # Keys of other users ----------------------------------------------------------------------
    def directory_keys(self, user_id: str) -> UserKeys:
        """`user_id`'s keys as the SRS presents them, checked for form but not against the pins."""
        _check_user_id(user_id)
        info = self.lookup(user_id)
        if info.user_id != user_id:
            raise ClientError(f"verification failed: asked the SRS for {user_id}'s keys, it "
                              "answered with another user's")
        return UserKeys.from_proto(info)

    def user_keys(self, user_id: str) -> tuple[UserKeys, str]:
        """`user_id`'s keys, pinned on first use; KeyChanged if they differ from the pinned ones."""
        keys = self.directory_keys(user_id)
        return keys, self.pins.check_or_pin(keys)

    def whois(self, user_id: str) -> tuple[UserKeys, str, str | None]:
        """The presented keys, "pinned" / "new" / "changed", and the pinned fingerprint. Pins nothing."""
        keys = self.directory_keys(user_id)
        status, pinned = self.pins.status(keys)
        return keys, status, pinned

    def trust(self, user_id: str, fp: str) -> UserKeys:
        """Pins the presented keys if, and only if, their fingerprint is `fp` (checked out of band)."""
        keys = self.directory_keys(user_id)
        wanted = "".join(fp.split()).lower()
        presented = keys.fingerprint()
        if wanted != presented:
            raise ClientError(f"verification failed: the SRS presents keys with fingerprint "
                              f"{presented} for {user_id}, not {wanted}; nothing was pinned")
        self.pins.pin(keys)
        return keys

    def owner_verifying_key(self, owner_id: str) -> bytes:
        """The key a record of `owner_id` must be signed with: one's own for one's records,
        otherwise the owner's pinned key, else the SRS's answer, pinned (trust on first use)."""
        if self.profile.role == "patient" and owner_id == self.user_id:
            return self.master.signing_key().verifying_key_bytes()
        pinned = self.pins.pinned_verifying_key(owner_id)
        if pinned is not None:
            return pinned
        return self.user_keys(owner_id)[0].verifying_key

    # Reading ------------------------------------------------------------------------------
    def _record_key(self, meta, header: crypto.RecordHeader, owner_vk: bytes) -> bytes:
        """The KEM key: directly for the owner; through the SRS for a grantee, every cfrag
        verified against the owner's (pinned) verifying key."""
        capsule = header.capsule
        if self.profile.role == "patient" and meta.owner_id == self.user_id:
            sk = self.master.partition_keys(meta.partition, meta.epoch).secret
            return crypto.decapsulate_original(sk, capsule)
        resp = self._call("SRS", self.srs.ReEncrypt, srs_pb2.ReEncryptRequest(
            owner_id=meta.owner_id, partition=meta.partition, epoch=meta.epoch,
            capsules=[capsule.to_bytes()], record_id=meta.record_id))
        try:
            delegating = crypto.decode_point(resp.delegating_public_key, "delegating key")
        except crypto.Malformed:
            raise ClientError("verification failed: delegating key is malformed") from None
        mine = self.master.receiving_keys()
        if not resp.results:
            raise ClientError("verification failed: the SRS returned no cfrags")
        verified = []
        for i, raw in enumerate(resp.results[0].cfrags):
            try:
                cfrag = crypto.CapsuleFrag.from_bytes(raw)
                verified.append(cfrag.verify(capsule, owner_vk, delegating, mine.public))
            except crypto.CryptoError:
                raise ClientError(f"verification failed: cfrag {i} carries no valid proof of "
                                  f"re-encryption from {meta.owner_id}'s kfrags") from None
        return crypto.decapsulate_reencrypted(mine.secret, delegating, capsule, verified)

    def download(self, record_id: str, out: BinaryIO):
        """Downloads and decrypts a record into `out`, segment by segment. Returns its meta.

        As the Rust client: the header must match the metadata and name a partition a record
        can have, and its owner must have signed it (with the binding of a deduplicated
        record) before any key is derived or asked for; every segment is written only once its
        tag and its owner signature verified. On an error, discard what was written.
        """
        _check_user_id(record_id, "record id")
        stream = self.cloud.GetRecord(cs_pb.GetRecordRequest(record_id=record_id))
        try:
            first = next(stream, None)
            if first is None or first.WhichOneof("part") != "meta":
                raise ClientError("verification failed: CloudStorage did not start the record with "
                                  "its metadata")
            meta = first.meta
            header = crypto.RecordHeader.from_bytes(meta.record_header)
            if (header.record_id != meta.record_id.encode() or header.owner_id != meta.owner_id.encode()
                    or header.partition != meta.partition or header.epoch != meta.epoch
                    or meta.record_id != record_id):
                raise ClientError("verification failed: record header does not match the record "
                                  "CloudStorage served")
            # Before any key is derived: a partition no owner can upload to (e.g. the
            # reserved `@receive`) is a forgery, and so is a header its owner did not sign.
            if not PARTITION.match(header.partition):
                raise ClientError(f"verification failed: CloudStorage served a record of partition "
                                  f"{header.partition!r}, which no record can have")
            owner_vk = self.owner_verifying_key(meta.owner_id)
            binding = crypto.dedup_binding(meta.blob_id, meta.wrapped_content_key)
            try:
                header.verify(owner_vk, binding)
            except crypto.VerificationFailed:
                raise ClientError(f"verification failed: record {record_id} is not signed by its "
                                  f"owner {meta.owner_id}: refusing it") from None
            blob_hash = None
            if meta.blob_id:
                # A deduplicated record: the capsule's key unwraps the blob's content key,
                # wrapped with the unsigned header bytes as AAD (docs/crypto.md §10.6).
                if header.key_source != 1:
                    raise ClientError("verification failed: a deduplicated record's header must "
                                      "use an external key")
                kem_key = self._record_key(meta, header, owner_vk)
                opener = crypto.BlobOpener(crypto.unwrap_content_key(
                    kem_key, meta.wrapped_content_key, header.unsigned_bytes()))
                blob_hash = hashlib.sha256()
            elif header.key_source != 0:
                raise ClientError("verification failed: a record with its own ciphertext must take "
                                  "its key from its capsule")
            else:
                kem_key = self._record_key(meta, header, owner_vk)
                opener = crypto.RecordOpener(header, crypto.dem_key(kem_key), owner_vk)
            try:
                for msg in stream:
                    if msg.WhichOneof("part") != "chunk":
                        raise ClientError("verification failed: CloudStorage sent metadata twice")
                    if blob_hash is not None:
                        blob_hash.update(msg.chunk)
                    for seg in opener.push(msg.chunk):
                        out.write(seg)
                out.write(opener.finish())
            except crypto.VerificationFailed:
                raise ClientError("verification failed: a segment of the record is not signed by "
                                  "its owner: refusing it") from None
            out.flush()
            if blob_hash is not None and blob_hash.digest() != meta.blob_id:
                raise ClientError("verification failed: the blob CloudStorage served does not "
                                  "match its id")
            return meta
        except grpc.RpcError as e:
            raise _rpc("CloudStorage", e) from None
        finally:
            stream.cancel()

    def get(self, record_id: str) -> bytes:
        """The whole plaintext of a record (small records; `download` streams)."""
        import io
        buf = io.BytesIO()
        self.download(record_id, buf)
        return buf.getvalue()

    def list(self, owner: str = "", partition: str = "") -> list:
        out, token = [], ""
        for _ in range(1000):  # bounded: a page token always advances
            page = self._call("CloudStorage", self.cloud.ListRecords, cs_pb.ListRecordsRequest(
                owner_id=owner, partition=partition, page_size=1000, page_token=token))
            out.extend(page.records)
            if not page.next_page_token:
                break
            token = page.next_page_token
        return out

    def grants(self):
        return self._call("AccessPolicy", self.policy.ListGrants, ap_pb.ListGrantsRequest())


class Patient(Session):
    """A patient: owns records, uploads, grants, revokes and rotates."""

    def __init__(self, mesh: MeshFile, home: str | os.PathLike):
        super().__init__(mesh, home)
        if self.profile.role != "patient":
            self.close()
            raise ClientError(f"{self.user_id} is a {self.profile.role}, not a patient")

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.profile.home)

    def seal_record(self, partition: str, length: int, read,
                    segment_size: int = crypto.DEFAULT_SEGMENT_SIZE, signer=None):
        """A fresh record of `partition` under its current epoch: (record id, epoch, header,
        iterator of signed segments). `signer` other than the owner's key is for tests only."""
        epoch = self.profile.current_epoch(partition)
        pk = self.master.partition_keys(partition, epoch).public
        capsule, kem_key = crypto.encapsulate(pk)
        record_id = os.urandom(16).hex()
        owner = self.master.signing_key()
        header = crypto.RecordHeader.new(record_id.encode(), self.user_id.encode(), partition,
                                         epoch, capsule, segment_size).sign(owner)
        segments = crypto.seal_segments(header, crypto.dem_key(kem_key), signer or owner, length,
                                        read)
        return record_id, epoch, header, segments

    def upload(self, partition: str, src: BinaryIO, length: int,
               segment_size: int = crypto.DEFAULT_SEGMENT_SIZE):
        """Encrypts `length` bytes from `src` under the partition's current key epoch, the
        header and every segment signed with the owner's key, while streaming them to
        CloudStorage. Returns the stored record's meta."""
        _check_partition(partition)
        record_id, epoch, header, segments = self.seal_record(partition, length, src.read,
                                                              segment_size)
        return self.put_sealed(record_id, partition, epoch, header, length, segments,
                               lambda: src.read(1))

    def put_sealed(self, record_id: str, partition: str, epoch: int, header, length: int,
                   segments, probe=lambda: b""):
        failure: list[BaseException] = []

        def requests() -> Iterator:
            yield cs_pb.PutRecordRequest(header=cs_pb.RecordUpload(
                record_id=record_id, partition=partition, epoch=epoch,
                record_header=header.to_bytes(),
                ciphertext_size=crypto.ciphertext_len(length, header.segment_size)))
            try:
                for sealed in segments:
                    yield cs_pb.PutRecordRequest(chunk=sealed)
                if probe():
                    raise ClientError("input is longer than its declared size (did the file grow?)")
            except Exception as e:  # ends the stream early; the server then stores nothing
                failure.append(e)

        try:
            resp = self.cloud.PutRecord(requests(), timeout=24 * 3600)
        except grpc.RpcError as e:
            # A local read error explains a broken upload better than the server's complaint.
            raise (failure[0] if failure else _rpc("CloudStorage", e)) from None
        if failure:
            raise failure[0]
        return resp.record

    def upload_bytes(self, partition: str, data: bytes, **kw):
        import io
        return self.upload(partition, io.BytesIO(data), len(data), **kw)

    def _put_kfrags(self, partition: str, epoch: int, grantee: UserKeys) -> None:
        grantee_pk = crypto.decode_point(grantee.pre_public_key, "grantee key")
        keys = self.master.partition_keys(partition, epoch)
        kfrags = crypto.generate_kfrags(keys.secret, grantee_pk, self.master.signing_key(), 1, 1)
        self._call("SRS", self.srs.PutKfrags, srs_pb2.PutKfragsRequest(
            partition=partition, epoch=epoch, grantee_id=grantee.user_id,
            delegating_public_key=keys.public_bytes(), kfrags=[k.to_bytes() for k in kfrags]))

    def grant(self, partition: str, grantee_id: str, not_before: int | None = None,
              expires_at: int | None = None):
        """Kfrags for each covered epoch to the grantee's key (pinned on first use; a changed
        key is refused), then the grant at AccessPolicy and, once AccessPolicy acknowledged
        exactly this grant, in the profile's ledger. With `not_before` the partition is rotated
        first and only the new epoch is granted, as the Rust client does."""
        _check_partition(partition)
        _check_user_id(grantee_id)
        if grantee_id == self.user_id:
            raise ClientError("you already own your records")
        self.ledger.load()  # a profile without a ledger fails before anything is sent
        grantee, _ = self.user_keys(grantee_id)
        current = (self.rotate(partition) if not_before is not None
                   else self.profile.current_epoch(partition))
        epoch_min = current if not_before is not None else 0
        for epoch in range(epoch_min, current + 1):
            self._put_kfrags(partition, epoch, grantee)
        asked = ap_pb.AccessGrant(owner_id=self.user_id, partition=partition, grantee_id=grantee_id,
                                  grantee_role=role_value(grantee.role), epoch_min=epoch_min,
                                  not_before=not_before or 0)
        if expires_at is not None:
            asked.expires_at = expires_at
        resp = self._call("AccessPolicy", self.policy.Grant, ap_pb.GrantRequest(grant=asked))
        got = resp.grant
        same = (resp.HasField("grant") and got.owner_id == asked.owner_id
                and got.partition == asked.partition and got.grantee_id == asked.grantee_id
                and got.grantee_role == asked.grantee_role and got.epoch_min == asked.epoch_min
                and not got.HasField("epoch_max") and got.not_before == asked.not_before
                and got.HasField("expires_at") == asked.HasField("expires_at")
                and got.expires_at == asked.expires_at)
        if not same:
            raise ClientError(f"verification failed: AccessPolicy acknowledged another grant than "
                              f"the one asked for ({partition} to {grantee_id}); it is not in "
                              "your ledger")
        self.ledger.record_grant(got, unix_now())
        return got

    def revoke(self, partition: str, grantee_id: str):
        """First in the ledger (so no later rotation includes the grantee, whatever AccessPolicy
        does), then at AccessPolicy (effective at once), then the kfrags at the SRS."""
        _check_partition(partition)
        _check_user_id(grantee_id)
        self.ledger.record_revoke(partition, grantee_id, unix_now())
        resp = self._call("AccessPolicy", self.policy.Revoke,
                          ap_pb.RevokeRequest(partition=partition, grantee_id=grantee_id))
        got = resp.grant
        if (not resp.HasField("grant") or got.owner_id != self.user_id
                or got.partition != partition or got.grantee_id != grantee_id):
            raise ClientError(f"verification failed: AccessPolicy acknowledged revoking another "
                              f"grant than {partition} from {grantee_id}; your ledger has it "
                              "revoked, so no rotation will include them")
        self._call("SRS", self.srs.DeleteKfrags,
                   srs_pb2.DeleteKfragsRequest(partition=partition, grantee_id=grantee_id))
        return got

    def rotate(self, partition: str) -> int:
        """Moves `partition` to a new key epoch. The grantees active in the ledger (never
        AccessPolicy's list) get kfrags for it first; the epoch is saved only if all succeeded."""
        _check_partition(partition)
        nxt = self.profile.current_epoch(partition) + 1
        if nxt >= 2**32:
            raise ClientError("no epochs left")
        for grantee_id in self.ledger.active(partition, unix_now()):
            grantee, _ = self.user_keys(grantee_id)
            self._put_kfrags(partition, nxt, grantee)
        self.profile.set_epoch(partition, nxt)
        return nxt

    def audit_grants(self):
        """The grants AccessPolicy lists, and where its list of one's own grants disagrees with
        the ledger (one line each)."""
        grants = self.grants()
        mine = [g for g in grants.given if g.owner_id == self.user_id]
        return grants, compare_ledger(self.ledger.load(), mine, unix_now())


def compare_ledger(ledger: dict, given: list, now: int) -> list[str]:
    """Where AccessPolicy's grants `given` by the owner and her ledger disagree (ledger.rs)."""
    out = []
    for g in given:
        e = ledger.get(g.partition, {}).get(g.grantee_id)
        if e is None:
            out.append(f"{g.partition} → {g.grantee_id} ({role_name(g.grantee_role)}): listed by "
                       "AccessPolicy, but you never granted it")
        elif e.get("revoked_at") is not None:
            out.append(f"{g.partition} → {g.grantee_id}: revoked by you, but AccessPolicy still "
                       "lists it")
    listed = {(g.partition, g.grantee_id) for g in given}
    for partition, grantees in sorted(ledger.items()):
        for grantee, e in sorted(grantees.items()):
            active = e.get("revoked_at") is None and (e.get("expires_at") is None
                                                      or e["expires_at"] > now)
            if active and (partition, grantee) not in listed:
                out.append(f"{partition} → {grantee}: granted by you, but AccessPolicy does not "
                           "list it")
    return out


def write_atomically(path: Path, session: Session, record_id: str):
    """Plaintext lands under a temporary name, renamed only once the record authenticated."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".sesphr-")
    try:
        with os.fdopen(fd, "wb") as f:
            meta = session.download(record_id, f)
        os.replace(tmp, path)
        return meta
    except BaseException:
        os.unlink(tmp)
        raise

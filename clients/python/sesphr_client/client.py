"""The SeSPHR flows over gRPC + mTLS, mirroring the Rust SDK (crates/client).

Same `mesh.toml`, same profile directory (a profile enrolled here works
with the Rust `sesphr` CLI and vice versa), same wire calls in the same
order: enroll, upload, get, grant, revoke, list, grants. The SRS is a setup
service (Enroll, Invite, Renew, GetUser) and n re-encryption nodes (`SrsNode`):
grants are t-of-n kfrag shares, one per node, and reads combine t nodes'
cfrags. `Operator` is the operator's side: invitations, and disabling and
enabling users.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import re
import shutil
import ssl
import struct
import sys
import tempfile
import threading
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

from . import crypto, tlog

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

MAX_MESSAGE = 8 << 20
ROLES = ["patient", "doctor", "nurse", "pharmacist", "insurer", "researcher", "family", "friend",
         "emergency"]
USER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# `inv1-` and 32 random bytes in lowercase hex (Srs/Invite).
INVITATION = re.compile(r"^inv1-[0-9a-f]{64}$")
# Srs/Invite: at most 30 days (0 asks for the default, 7 days).
MAX_INVITATION_SECS = 30 * 86400
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
MAX_NODES = 16  # re-encryption node indices are 1..=16 (sesphr-identity's NodeIndex)
MAX_TIMEOUT_MS = 24 * 3600 * 1000
TIMEOUT_KEYS = ("connect_ms", "unary_ms", "first_message_ms", "idle_ms")


@dataclass(frozen=True)
class NodeEntry:
    """One re-encryption node of the mesh file: its certificate must name
    `spiffe://<td>/service/srs-node/<index>`."""

    index: int
    url: str
    oprf_public_share: bytes  # 33 bytes, SEC1 compressed


@dataclass(frozen=True)
class Timeouts:
    """The mesh file's `[timeouts]`, in seconds (defaults as in the Rust client)."""

    connect: float = 10.0
    unary: float = 30.0
    first_message: float = 30.0
    idle: float = 30.0


def _combine_public_shares(t: int, shares: list[tuple[int, bytes]]):
    """`sum λ_i · P_i` at 0 over the first t (index, share) pairs (docs/dedup.md)."""
    chosen = shares[:t]
    pts = [crypto.decode_point(p, "OPRF public share") for _, p in chosen]
    acc = crypto.INFINITY
    for lam, pt in zip(crypto.lagrange_coefficients([i for i, _ in chosen]), pts):
        acc = acc + pt * lam
    return acc


def _check_nodes(threshold, entries) -> tuple[int, tuple[NodeEntry, ...]]:
    """As the Rust `MeshFile::nodes`: 1 <= t <= n, indices exactly 1..=n, https URLs, and OPRF
    public shares that are one t-of-n dealing. Returns (t, nodes in index order)."""
    if not entries:
        raise ValueError("lists no [[srs_nodes]] (re-encryption nodes): a mesh file from a "
                         "single-SRS mesh; see `sesphrd migrate-srs`, or restart `sesphrd dev`")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("srs_nodes must be an array of tables ([[srs_nodes]])")
    n = len(entries)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= n:
        raise ValueError(f"threshold {threshold!r} must be 1 to the number of srs_nodes ({n})")
    nodes: list[NodeEntry] = []
    for e in entries:
        fields = {"index", "url", "oprf_public_share"}
        if set(e) - fields:
            raise ValueError(f"srs node: unknown keys {sorted(set(e) - fields)}")
        if fields - set(e):
            raise ValueError(f"srs node: missing {sorted(fields - set(e))[0]}")
        index, url, share = e["index"], e["url"], e["oprf_public_share"]
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_NODES:
            raise ValueError(f"invalid re-encryption node index {index!r}: expected 1 to "
                             f"{MAX_NODES}")
        if any(m.index == index for m in nodes):
            raise ValueError(f"srs node {index} is listed twice")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ValueError(f"srs node {index}: url {url!r} must start with https://")
        try:
            raw = bytes.fromhex(share.strip()) if isinstance(share, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 33:
            raise ValueError(f"srs node {index}: oprf_public_share is not 66 hex digits")
        nodes.append(NodeEntry(index, url, raw))
    nodes.sort(key=lambda m: m.index)
    indices = [m.index for m in nodes]
    if indices != list(range(1, n + 1)):
        raise ValueError(f"srs_nodes must be numbered 1 to {n}, each once (they are {indices})")
    shares = [(m.index, m.oprf_public_share) for m in nodes]
    try:
        same = (_combine_public_shares(threshold, shares)
                == _combine_public_shares(threshold, shares[n - threshold:]))
    except crypto.Malformed:
        same = False
    if not same:
        raise ValueError(f"the srs_nodes' OPRF public shares are not one {threshold}-of-{n} "
                         "dealing")
    return threshold, tuple(nodes)


def _check_timeouts(section) -> Timeouts:
    if section is None:
        return Timeouts()
    if not isinstance(section, dict) or set(section) - set(TIMEOUT_KEYS):
        raise ValueError(f"[timeouts] takes only {', '.join(TIMEOUT_KEYS)}")
    got = {}
    for k, v in section.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"timeouts.{k} must be > 0")
        if v > MAX_TIMEOUT_MS:
            raise ValueError(f"timeouts.{k} must be at most {MAX_TIMEOUT_MS}")
        got[k.removesuffix("_ms")] = v / 1000
    return Timeouts(**got)


@dataclass(frozen=True)
class AuditConfig:
    """The mesh file's `[audit]`: the audit log's origin and key, the witnesses (name, key)
    and how many of them must have cosigned a checkpoint before this client believes it."""

    origin: str
    log_key: tlog.PublicKey
    witness_quorum: int
    witnesses: tuple[tuple[str, tlog.PublicKey], ...]

    def witness_keys(self) -> dict[str, tlog.PublicKey]:
        return dict(self.witnesses)


AUDIT_KEYS = ("origin", "log_key", "witness_quorum", "witnesses")
AUDIT_PAGE = 1000  # ListAudit entries asked for per reply (crates/client/src/bounds.rs)
MAX_AUDIT_ENTRIES = 250_000


def _check_audit(section, trust_domain: str) -> AuditConfig | None:
    """`[audit]` (optional): origin (default `<trust_domain>/audit`), log_key (66 hex digits,
    SEC1 compressed), witness_quorum (0 to the number of witnesses; default a majority) and
    `[[audit.witnesses]]` name/key, each name and key once."""
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - set(AUDIT_KEYS):
        raise ValueError(f"[audit] takes only {', '.join(AUDIT_KEYS)}")
    try:
        origin = tlog.check_name(section.get("origin", f"{trust_domain}/audit"), "audit.origin")
        if "log_key" not in section:
            raise ValueError("[audit] has no log_key")
        log_key = _audit_key(section["log_key"], "audit.log_key")
    except tlog.TlogError as e:
        raise ValueError(str(e)) from None
    entries = section.get("witnesses", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("audit.witnesses must be an array of tables ([[audit.witnesses]])")
    witnesses: list[tuple[str, tlog.PublicKey]] = []
    for e in entries:
        if set(e) != {"name", "key"}:
            raise ValueError(f"an [[audit.witnesses]] entry takes exactly name and key, not "
                             f"{sorted(e)}")
        try:
            name = tlog.check_name(e["name"], "audit witness name")
        except tlog.TlogError as err:
            raise ValueError(str(err)) from None
        key = _audit_key(e["key"], f"audit witness {name}: key")
        if any(n == name for n, _ in witnesses):
            raise ValueError(f"audit witness {name} is listed twice")
        if key == log_key or any(k == key for _, k in witnesses):
            raise ValueError(f"audit witness {name}: its key is listed already (one key would "
                             "count twice)")
        witnesses.append((name, key))
    quorum = section.get("witness_quorum", len(witnesses) // 2 + 1 if witnesses else 0)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 0 <= quorum <= len(witnesses):
        raise ValueError(f"audit.witness_quorum {quorum!r} must be 0 to the number of "
                         f"[[audit.witnesses]] ({len(witnesses)})")
    return AuditConfig(origin, log_key, quorum, tuple(witnesses))


def _audit_key(value, what: str) -> tlog.PublicKey:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string of 66 hex digits")
    try:
        return tlog.PublicKey.from_hex(value)
    except tlog.TlogError as e:
        raise ValueError(f"{what}: {e}") from None


@dataclass(frozen=True)
class MeshFile:
    trust_domain: str
    ca: Path
    cloud_storage: str
    srs: str  # the SRS setup service (Enroll, GetUser)
    access_policy: str
    threshold: int
    srs_nodes: tuple[NodeEntry, ...]  # the re-encryption nodes, in index order 1..=n
    timeouts: Timeouts = Timeouts()
    audit: AuditConfig | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MeshFile":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ClientError(f"{path}: {e}") from None
        known = {"trust_domain", "ca", "cloud_storage", "srs", "access_policy",
                 "threshold", "srs_nodes", "timeouts", "audit"}
        if "enrollment_token" in data:
            raise ClientError(f"{path}: enrollment_token is no longer used: users enroll with an "
                              "invitation (or, patients, without one where the mesh allows it)")
        if set(data) - known:
            raise ClientError(f"{path}: unknown keys {sorted(set(data) - known)}")
        try:
            ca = Path(data["ca"])
            if not ca.is_absolute():  # relative to the mesh file, as in the Rust CLI
                ca = path.parent / ca
            threshold, nodes = _check_nodes(data.get("threshold", 0), data.get("srs_nodes", []))
            return cls(data["trust_domain"], ca, data["cloud_storage"], data["srs"],
                       data["access_policy"], threshold, nodes,
                       _check_timeouts(data.get("timeouts")),
                       _check_audit(data.get("audit"), data["trust_domain"]))
        except KeyError as e:
            raise ClientError(f"{path}: missing {e.args[0]}") from None
        except ValueError as e:
            raise ClientError(f"{path}: {e}") from None

    def service_identity(self, service: str) -> str:
        """The SPIFFE id `cloud-storage`, `srs` or `access-policy` must present."""
        return f"spiffe://{self.trust_domain}/service/{service}"

    def node_identity(self, index: int) -> str:
        """The SPIFFE id re-encryption node `index` must present."""
        return f"spiffe://{self.trust_domain}/service/srs-node/{index}"


def grpc_target(url: str) -> str:
    """`https://host:port` → `host:port` (the mesh speaks only TLS)."""
    if not url.startswith("https://"):
        raise ClientError(f"{url!r} must start with https:// (the mesh speaks only TLS)")
    return url.removeprefix("https://").rstrip("/")


def secure_channel(url: str, ca_pem: bytes, key_pem: bytes | None = None,
                   cert_pem: bytes | None = None) -> grpc.Channel:
    """A plain grpcio mTLS channel (TLS-only when no key/cert). It checks the chain and the host
    name but not which service answers: for raw calls in tests; sessions use PinnedChannel."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                         certificate_chain=cert_pem)
    return grpc.secure_channel(grpc_target(url), creds, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ])


# Channels that talk only to the expected identity -------------------------------------------
# grpcio's TLS checks the server's chain and host name but cannot be told which SPIFFE id
# the server must present (a name override also becomes the SNI, which the servers refuse).
# So, as the Rust client's connector does its own TLS, each channel here goes through a
# local relay: gRPC speaks plain HTTP/2 over a Unix socket in a private directory, and the
# relay makes every connection's TLS itself (service CA, host name, ALPN h2, the client's
# certificate) and forwards it only if the server's certificate names exactly the expected
# `spiffe://` URI SAN.
_LOOP_LOCK = threading.Lock()
_LOOP: asyncio.AbstractEventLoop | None = None


def _relay_loop() -> asyncio.AbstractEventLoop:
    """One event loop thread for every relay of the process."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="sesphr-tls-relay",
                             daemon=True).start()
            _LOOP = loop
        return _LOOP


def peer_spiffe_ids(cert: dict) -> list[str]:
    """The `spiffe://` URI SANs of a certificate as `SSLSocket.getpeercert()` returns it."""
    return [v for k, v in cert.get("subjectAltName", ())
            if k == "URI" and v.startswith("spiffe://")]


class PinnedChannel:
    """A gRPC channel to `url` that reaches only a server presenting `expected` (one SPIFFE
    id), over the service CA; with `cert_file`/`key_file` the client presents that identity.
    `last_error` says why the last connection was not made."""

    def __init__(self, url: str, expected: str, ca_pem: bytes, cert_file: Path | None = None,
                 key_file: Path | None = None, connect_timeout: float = 10.0):
        target = grpc_target(url)
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit() or "/" in target:
            raise ClientError(f"{url!r} must be https://host:port, without a path")
        self.url, self.expected = url, expected
        self._host, self._port = host.strip("[]"), int(port)
        self._timeout = connect_timeout
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file))
        ctx.set_alpn_protocols(["h2"])
        self._ctx = ctx
        self.last_error: str | None = None
        self._conns: set = set()
        self._tasks: set = set()
        self._loop = _relay_loop()
        self._dir = tempfile.mkdtemp(prefix="sesphr-")  # 0700: only this user can connect
        sock = os.path.join(self._dir, "relay.sock")
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._relay, sock), self._loop).result()
        self.channel = grpc.insecure_channel("unix:" + sock, options=[
            ("grpc.default_authority", target),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ])

    async def _relay(self, down_r, down_w) -> None:
        self._tasks.add(asyncio.current_task())
        self._conns.add(down_w)
        up_w = None
        try:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(
                    self._host, self._port, ssl=self._ctx, server_hostname=self._host,
                    ssl_handshake_timeout=self._timeout), self._timeout)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                self.last_error = f"no TLS connection to {self.url}: {e or type(e).__name__}"
                return
            self._conns.add(up_w)
            ids = peer_spiffe_ids(up_w.get_extra_info("peercert") or {})
            if ids != [self.expected]:
                shown = " and ".join(ids) if ids else "no SPIFFE id"
                self.last_error = (f"the server at {self.url} presents {shown}, not "
                                   f"{self.expected}: not talking to it")
                return
            self.last_error = None
            await asyncio.gather(self._pipe(down_r, up_w), self._pipe(up_r, down_w))
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            for w in (up_w, down_w):
                if w is not None:
                    self._conns.discard(w)
                    w.close()

    @staticmethod
    async def _pipe(reader, writer) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()  # TLS has no half-close: the connection ends both ways

    def explain(self, err: ClientError) -> ClientError:
        """`err` with why the relay refused the server, if that is why the call failed."""
        if err.code == grpc.StatusCode.UNAVAILABLE and self.last_error:
            return ClientError(f"{err} ({self.last_error})", err.code)
        return err

    def close(self) -> None:
        self.channel.close()

        async def stop():
            self._server.close()
            for w in list(self._conns):
                w.close()
            tasks = [t for t in self._tasks if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        shutil.rmtree(self._dir, ignore_errors=True)


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


SEALED_MAGIC = b"sesphr-sealed-"


def _refuse_sealed(path: Path) -> None:
    """A profile the `sesphr` CLI protected with a passphrase keeps master.key and tls.key
    sealed (Argon2id + AES-256-GCM, docs/recovery.md); this client does not open them."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SEALED_MAGIC))
    except FileNotFoundError:
        return
    except OSError as e:
        raise ClientError(f"{path}: {e}") from None
    if head == SEALED_MAGIC:
        raise ClientError(
            f"{path} is protected by a passphrase (sealed by the sesphr CLI), which the Python "
            f"client does not read; `sesphr passphrase remove` stores it unprotected")


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
        for name in ("master.key", "tls.key"):
            _refuse_sealed(self.home / name)

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


# Owed node operations (crates/client/src/pending.rs) -------------------------------------------
_PENDING_BASE = ("node", "partition", "grantee_id", "since", "kind")
_PENDING_PUT = ("epoch", "delegating_public_key", "kfrag")


def _write_secret(path: Path, text: str) -> None:
    """Like the Rust `write_secret`: a temporary file (0600), fsync, rename."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    os.chmod(path, 0o600)


class Pending:
    """DIR/pending-nodes.toml (0600), the Rust client's file: kfrag shares a node did not take
    and deletions a node did not hear, as `[[ops]]` tables, oldest first. They are replayed, in
    order per node, before every later grant, revocation or rotation (by either client), and a
    revocation first drops every share still owed for that grant."""

    def __init__(self, home: Path):
        self.path = Path(home) / "pending-nodes.toml"

    def load(self) -> list[dict]:
        data = _load_toml(self.path, dict)
        ops = data.get("ops", [])
        if set(data) - {"ops"} or not isinstance(ops, list):
            raise ClientError(f"{self.path}: expected only [[ops]] tables")
        for op in ops:
            kind = op.get("kind") if isinstance(op, dict) else None
            want = set(_PENDING_BASE) | (set(_PENDING_PUT) if kind == "put" else set())
            ok = (kind in ("put", "delete") and set(op) == want
                  and all(isinstance(op[k], int) and not isinstance(op[k], bool)
                          for k in ("node", "since") + (("epoch",) if kind == "put" else ()))
                  and all(isinstance(op[k], str) for k in want
                          if k not in ("node", "since", "epoch")))
            if not ok:
                raise ClientError(f"{self.path}: an owed operation is malformed: {op!r}")
        return ops

    def save(self, ops: list[dict]) -> None:
        if not ops and not self.path.exists():
            return
        parts = []
        for op in ops:
            keys = _PENDING_BASE + (_PENDING_PUT if op["kind"] == "put" else ())
            parts.append("[[ops]]\n" + "".join(f"{k} = {_toml_value(op[k])}\n" for k in keys))
        _write_secret(self.path, "\n".join(parts))

    def add(self, more: list[dict]) -> None:
        if more:
            self.save(self.load() + more)

    def drop_puts(self, partition: str, grantee_id: str) -> None:
        """Forgets every share still owed for (partition, grantee): before a revocation."""
        ops = self.load()
        kept = [op for op in ops if not (op["partition"] == partition
                                         and op["grantee_id"] == grantee_id
                                         and op["kind"] == "put")]
        if len(kept) != len(ops):
            self.save(kept)


# The pinned audit checkpoint ---------------------------------------------------------------
_HEAD_KEYS = {"origin", "size", "root", "time", "signature"}


class AuditHead:
    """DIR/audit-head.toml (0600), the Rust client's file: the newest audit checkpoint this
    profile verified (log signature, quorum of cosignatures), with them. A later checkpoint
    is accepted only if a consistency proof shows it extends this one."""

    def __init__(self, home: Path):
        self.path = Path(home) / "audit-head.toml"

    def load(self) -> tlog.SignedCheckpoint | None:
        data = _load_toml(self.path, lambda: None)
        if data is None:
            return None
        try:
            cosigs = data.get("cosignatures", [])
            # seen_entries/seen_digest: the Rust client's record of the entries it
            # showed up to this size (checked by it on its next read; kept as
            # written here only if this client does not replace the pin).
            optional = {"cosignatures", "seen_entries", "seen_digest"}
            if set(data) - _HEAD_KEYS - optional or _HEAD_KEYS - set(data):
                raise ValueError(f"expected exactly {', '.join(sorted(_HEAD_KEYS))} and "
                                 "[[cosignatures]]")
            if not isinstance(data.get("seen_entries", 0), int) or not isinstance(
                    data.get("seen_digest", ""), str):
                raise ValueError("seen_entries must be an integer, seen_digest hex")
            if not isinstance(cosigs, list) or not all(
                    isinstance(c, dict) and set(c) == {"witness", "time", "signature"}
                    for c in cosigs):
                raise ValueError("[[cosignatures]] take exactly witness, time, signature")
            for k in ("size", "time"):
                if isinstance(data[k], bool) or not isinstance(data[k], int):
                    raise ValueError(f"{k} must be an integer")
            if not all(isinstance(data[k], str) for k in ("origin", "root", "signature")):
                raise ValueError("origin, root and signature must be strings")
            cp = tlog.Checkpoint(tlog.check_name(data["origin"], "origin"), data["size"],
                                 bytes.fromhex(data["root"]), data["time"])
            tlog.Checkpoint.parse(cp.body())  # the same rules as a served checkpoint
            out = []
            for c in cosigs:
                if (isinstance(c["time"], bool) or not isinstance(c["time"], int)
                        or not isinstance(c["signature"], str)):
                    raise ValueError("a cosignature's time must be an integer, its signature hex")
                out.append(tlog.Cosignature(tlog.check_name(c["witness"], "witness"), c["time"],
                                            bytes.fromhex(c["signature"])))
            return tlog.SignedCheckpoint(cp, bytes.fromhex(data["signature"]), tuple(out))
        except (ValueError, tlog.TlogError) as e:
            raise ClientError(f"{self.path}: {e}") from None

    def save(self, signed: tlog.SignedCheckpoint) -> None:
        cp = signed.checkpoint
        text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in (
            ("origin", cp.origin), ("size", cp.size), ("root", cp.root.hex()),
            ("time", cp.time), ("signature", signed.signature.hex())))
        for c in signed.cosignatures:
            text += ("\n[[cosignatures]]\n"
                     f"witness = {_toml_value(c.witness)}\ntime = {c.time}\n"
                     f"signature = {_toml_value(c.signature.hex())}\n")
        _write_secret(self.path, text)


# Enrollment --------------------------------------------------------------------------------
def make_csr(key_pem: bytes | None = None) -> tuple[bytes, bytes]:
    """A PKCS#10 CSR for an EC P-256 TLS key, a new one unless `key_pem` is given: (csr DER,
    key PEM)."""
    if key_pem is None:
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    else:
        key = serialization.load_pem_private_key(key_pem, password=None)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sesphr-client")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER), key_pem


def check_invitation(text: str) -> str:
    """An invitation as typed or pasted (surrounding blanks dropped), checked for its form:
    `inv1-` and 64 lowercase hex digits. "" (none) passes."""
    text = text.strip()
    if text and not INVITATION.match(text):
        raise ClientError("that is not an invitation (inv1- followed by 64 lowercase hex digits)")
    return text


def check_issued(cert_pem: str, expected: str, key_pem: bytes) -> int:
    """A certificate the SRS issued to this client: it must name exactly the SPIFFE id
    `expected`, certify the client's own TLS key and not have expired. Returns its expiry
    (unix seconds)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise ClientError("the SRS returned no usable certificate") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [expected]:
        raise ClientError(f"the SRS issued a certificate for {' and '.join(uris) or 'no id'} "
                          f"instead of {expected}")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ours = serialization.load_pem_private_key(key_pem, password=None).public_key()
    if cert.public_key().public_bytes(*spki) != ours.public_bytes(*spki):
        raise ClientError("the SRS issued a certificate for another TLS key than this client's")
    not_after = int(cert.not_valid_after_utc.timestamp())
    if not_after <= unix_now():
        raise ClientError("the SRS issued a certificate that has already expired")
    return not_after


def _enroll_call(mesh: MeshFile, ca_pem: bytes, request):
    # No client certificate yet; the server must still be the SRS setup service.
    srs = PinnedChannel(mesh.srs, mesh.service_identity("srs"), ca_pem,
                        connect_timeout=mesh.timeouts.connect)
    try:
        return srs_pb2_grpc.SrsStub(srs.channel).Enroll(request, timeout=mesh.timeouts.unary)
    except grpc.RpcError as e:
        raise srs.explain(_rpc("SRS", e)) from None
    finally:
        srs.close()


def enroll(mesh: MeshFile, home: Path, user_id: str, role: str, invitation: str = "") -> Profile:
    """Generates the master secret and a TLS key locally; the SRS gets a CSR and public keys.

    `invitation` admits this one id and role, once. Without one (""), only a patient can
    enroll, and only where the mesh allows self-registration: anyone else is refused
    (PERMISSION_DENIED)."""
    _check_user_id(user_id)
    role_enum = role_value(role)
    invitation = check_invitation(invitation)
    if Profile.exists(home):
        raise ClientError(f"{home} already holds a profile; use another --home")
    ca_pem = mesh.ca.read_bytes()
    master = crypto.MasterSecret.generate()
    csr_der, key_pem = make_csr()
    resp = _enroll_call(mesh, ca_pem, srs_pb2.EnrollRequest(
        invitation=invitation, user_id=user_id, role=role_enum, csr_der=csr_der,
        pre_public_key=master.receiving_keys().public_bytes(),
        verifying_key=master.signing_key().verifying_key_bytes()))
    expected = spiffe_id(mesh.trust_domain, role, user_id)
    if resp.spiffe_id != expected:
        raise ClientError(f"the SRS issued a certificate for {resp.spiffe_id} instead of {expected}")
    check_issued(resp.certificate_pem, expected, key_pem)
    profile = Profile.create(home, user_id, role, mesh.trust_domain, master, key_pem,
                             resp.certificate_pem.encode(), ca_pem)
    Ledger.create(home)  # an empty grants.toml, as the Rust enroll writes
    return profile


LEGACY_DEVICE = "device-1"  # the device of certificates that name none (a user's first)


def certificate_device(cert_pem: bytes) -> str:
    """The device a certificate was issued to: its subject's organizational unit (the SRS
    puts the device name there), `device-1` where it names none."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ClientError("not a certificate") from None
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if ous else LEGACY_DEVICE


def reenroll(mesh: MeshFile, home: Path, invitation: str = "", notices: list[str] | None = None
             ) -> int:
    """Re-enrols the existing profile in `home` (after its certificate expired or its TLS key
    was lost): the same id, role and keys, proven by a key proof (docs/crypto.md §4.3: a
    signature of the registered kfrag-signing key over the trust domain, the id and the CSR),
    on a new device with a new TLS key and certificate (`tls.key` and `tls.pem` replaced).
    The old certificate is not needed. `invitation`: an operator's re-invitation, only where
    the mesh asks for one ("": the key proof alone). The profile's previous device is then
    removed (its certificates revoked); if that fails, a line is added to `notices`. Returns
    the new certificate's expiry (unix seconds)."""
    invitation = check_invitation(invitation)
    profile = Profile(home)
    if profile.trust_domain != mesh.trust_domain:
        raise ClientError(f"profile is for trust domain {profile.trust_domain}, mesh file for "
                          f"{mesh.trust_domain}")
    master = profile.master_secret()
    try:
        old_device = certificate_device((profile.home / "tls.pem").read_bytes())
    except (OSError, ClientError):
        old_device = None
    signing = master.signing_key()
    csr_der, key_pem = make_csr()
    resp = _enroll_call(mesh, mesh.ca.read_bytes(), srs_pb2.EnrollRequest(
        invitation=invitation, user_id=profile.user_id, role=role_value(profile.role),
        csr_der=csr_der, pre_public_key=master.receiving_keys().public_bytes(),
        verifying_key=signing.verifying_key_bytes(),
        key_proof=crypto.sign_key_proof(signing, mesh.trust_domain, profile.user_id, csr_der)))
    expected = spiffe_id(profile.trust_domain, profile.role, profile.user_id)
    if resp.spiffe_id != expected:
        raise ClientError(f"the SRS issued a certificate for {resp.spiffe_id} instead of {expected}")
    not_after = check_issued(resp.certificate_pem, expected, key_pem)
    # The new key, then its certificate: each replaced atomically, as the Rust client does.
    tmp = profile.home / "tls.key.new"
    _write(tmp, key_pem, 0o600)
    _write_public(profile.home / "tls.pem.new", resp.certificate_pem)
    os.replace(tmp, profile.home / "tls.key")
    os.replace(profile.home / "tls.pem.new", profile.home / "tls.pem")
    new_device = resp.device or certificate_device(resp.certificate_pem.encode())
    if old_device and old_device != new_device:
        try:
            with Session(mesh, home) as s:
                s.remove_device(old_device)
        except (ClientError, OSError) as e:
            if notices is not None:
                notices.append(f"could not remove the previous device {old_device}: {e}")
    return not_after


@dataclass(frozen=True)
class Invitation:
    """What Srs/Invite answered: the invitation text (shown once), when it expires (unix
    seconds), and whether it re-admits an enrolled user."""

    invitation: str
    expires_at: int
    reenrollment: bool


def _invite(stub, call, user_id: str, role: str, valid_for_secs: int) -> Invitation:
    _check_user_id(user_id)
    role_enum = role_value(role)
    if valid_for_secs < 0:
        raise ClientError("an invitation cannot be valid for a negative time")
    resp = call(stub.Invite, srs_pb2.InviteRequest(user_id=user_id, role=role_enum,
                                                   valid_for_secs=valid_for_secs))
    if not INVITATION.match(resp.invitation):
        raise ClientError("the SRS answered with something that is not an invitation")
    now = unix_now()
    # 0 asks for the default (7 days); allow the clocks a minute of disagreement.
    longest = valid_for_secs if valid_for_secs else 7 * 86400
    if not now - 60 < resp.expires_at <= now + longest + 60:
        raise ClientError(f"the SRS's invitation expires at {resp.expires_at}, not within the "
                          f"{longest} s asked for")
    return Invitation(resp.invitation, resp.expires_at, resp.reenrollment)


def own_fingerprint(profile: Profile) -> str:
    """The fingerprint of a profile's own keys: what its user reads out to those who grant to
    it or read its records."""
    master = profile.master_secret()
    return fingerprint(profile.user_id, profile.role, master.receiving_keys().public_bytes(),
                       master.signing_key().verifying_key_bytes())


# The re-encryption nodes (crates/client/src/nodes.rs) ---------------------------------------
# A node's error that answers the request (the caller should hear it) rather than saying the
# node is away.
ANSWER_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION,
                          grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED})


def _code_words(code) -> str:
    return code.name.lower().replace("_", " ") if code else "error"


@dataclass
class NodeClient:
    """One re-encryption node, reached only if it presents `service/srs-node/<index>`."""

    index: int
    url: str
    pinned: PinnedChannel
    stub: object  # srs_pb2_grpc.SrsNodeStub

    def describe(self, err: grpc.RpcError) -> str:
        code = err.code() if hasattr(err, "code") else None
        text = f"node {self.index} ({self.url}): {_code_words(code)}: {err.details()}"
        if code == grpc.StatusCode.UNAVAILABLE and self.pinned.last_error:
            text += f" ({self.pinned.last_error})"
        return text

    def error(self, err: grpc.RpcError) -> ClientError:
        return ClientError(f"SRS node: {self.describe(err)}", err.code())


class Nodes:
    """The mesh's n re-encryption nodes and the threshold t a read needs.

    A grant sends share i of a t-of-n node-bound kfrag sharing to node i only and stands once
    t nodes took theirs (the others are owed theirs in pending-nodes.toml); a read asks every
    node at once, checks each cfrag as it comes and opens the capsule with the first t that
    verify; a revocation tells every node and owes the unreachable ones. What went wrong at
    single nodes while a call succeeded goes to `notices` (the CLI prints them on stderr)."""

    def __init__(self, mesh: MeshFile, ca_pem: bytes, cert_file: Path, key_file: Path,
                 notices: list[str]):
        self.threshold = mesh.threshold
        self.timeout = mesh.timeouts.unary
        self.notices = notices
        self.nodes: list[NodeClient] = []
        try:
            for entry in mesh.srs_nodes:
                ch = PinnedChannel(entry.url, mesh.node_identity(entry.index), ca_pem, cert_file,
                                   key_file, mesh.timeouts.connect)
                self.nodes.append(NodeClient(entry.index, entry.url, ch,
                                             srs_pb2_grpc.SrsNodeStub(ch.channel)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for node in self.nodes:
            node.pinned.close()

    def node(self, index: int) -> NodeClient:
        return next(n for n in self.nodes if n.index == index)

    def _start(self, calls: list[tuple[NodeClient, str, object]]) -> tuple[queue.Queue, list]:
        """Starts every (node, method, request) call at once; finished calls arrive on the
        queue as (node, future), in the order they finish."""
        done: queue.Queue = queue.Queue()
        futures = []
        for node, method, req in calls:
            fut = getattr(node.stub, method).future(req, timeout=self.timeout)
            fut.add_done_callback(lambda f, node=node: done.put((node, f)))
            futures.append(fut)
        return done, futures

    def _all(self, calls) -> list[tuple[NodeClient, object, grpc.RpcError | None]]:
        """(node, response, None) or (node, None, error) for every call, in node order."""
        done, _ = self._start(calls)
        results = {}
        for _ in calls:
            node, fut = done.get()
            try:
                results[node.index] = (node, fut.result(), None)
            except grpc.RpcError as e:
                results[node.index] = (node, None, e)
        return [results[i] for i in sorted(results)]

    def put_grant(self, owner_id: str, partition: str, epoch: int, keys: crypto.KeyPair,
                  signer: crypto.SigningKey, grantee: "UserKeys", pending: Pending) -> None:
        """Makes the grantee's t-of-n kfrags from the partition key of `epoch` and sends share
        i to node i. Succeeds once t nodes took theirs; the others are owed theirs."""
        grantee_pk = crypto.decode_point(grantee.pre_public_key, "grantee key")
        context = crypto.grant_context(owner_id, partition, epoch, grantee.user_id)
        kfrags = crypto.generate_node_kfrags(keys.secret, grantee_pk, signer, self.threshold,
                                             len(self.nodes), context)
        delegating = keys.public_bytes()
        reqs = {node.index: srs_pb2.PutKfragRequest(
            partition=partition, epoch=epoch, grantee_id=grantee.user_id,
            delegating_public_key=delegating, kfrag=kfrag.to_bytes())
            for node, kfrag in zip(self.nodes, kfrags)}
        results = self._all([(node, "PutKfrag", reqs[node.index]) for node in self.nodes])
        took, owed = 0, []
        for node, _, err in results:
            if err is None:
                took += 1
            elif err.code() in ANSWER_CODES:
                # A node that understood and refused: the grant is wrong (or the node lies);
                # nothing is owed, the owner hears it.
                raise node.error(err)
            else:
                owed.append((node, err))
        if took < self.threshold:
            away = "; ".join(node.describe(err) for node, err in owed)
            raise ClientError(f"SRS nodes: unavailable: only {took} of the {len(self.nodes)} "
                              f"re-encryption nodes took their kfrag share; a grant needs "
                              f"{self.threshold}. Not reached: {away}",
                              grpc.StatusCode.UNAVAILABLE)
        now, ops = unix_now(), []
        for node, err in owed:
            self.notices.append(
                f"{node.describe(err)} did not take its kfrag share for {grantee.user_id} "
                f"({partition}, epoch {epoch}); it is sent again before your next grant, revoke "
                "or rotate, or with `retry`")
            ops.append({"node": node.index, "partition": partition,
                        "grantee_id": grantee.user_id, "since": now, "kind": "put",
                        "epoch": epoch, "delegating_public_key": delegating.hex(),
                        "kfrag": reqs[node.index].kfrag.hex()})
        pending.add(ops)

    def delete_grant(self, partition: str, grantee_id: str, pending: Pending) -> list[int]:
        """Deletes every kfrag share of (partition, grantee) at every node, after dropping the
        shares still owed for it; unreachable nodes are owed the deletion. Returns them."""
        pending.drop_puts(partition, grantee_id)
        req = srs_pb2.DeleteKfragsRequest(partition=partition, grantee_id=grantee_id)
        now, ops, unreached = unix_now(), [], []
        for node, _, err in self._all([(node, "DeleteKfrags", req) for node in self.nodes]):
            if err is not None:
                self.notices.append(
                    f"{node.describe(err)} did not confirm deleting {grantee_id}'s kfrag shares "
                    f"({partition}); AccessPolicy already refuses {grantee_id}, and the deletion "
                    "is sent again before your next grant, revoke or rotate, or with `retry`")
                unreached.append(node.index)
                ops.append({"node": node.index, "partition": partition, "grantee_id": grantee_id,
                            "since": now, "kind": "delete"})
        pending.add(ops)
        return unreached

    def retry(self, pending: Pending) -> int:
        """Replays owed operations in order per node; a node that fails again keeps the rest of
        its list. Returns how many are still owed."""
        ops = pending.load()
        if not ops:
            return 0
        left, failed = [], set()
        for op in ops:
            node = next((n for n in self.nodes if n.index == op["node"]), None)
            if node is None:  # a node no longer in the mesh file is owed nothing
                continue
            if node.index in failed:
                left.append(op)
                continue
            try:
                if op["kind"] == "delete":
                    node.stub.DeleteKfrags(srs_pb2.DeleteKfragsRequest(
                        partition=op["partition"], grantee_id=op["grantee_id"]),
                        timeout=self.timeout)
                else:
                    try:
                        delegating = bytes.fromhex(op["delegating_public_key"])
                        kfrag = bytes.fromhex(op["kfrag"])
                    except ValueError:
                        raise ClientError(f"{pending.path} holds a share that is not hex") from None
                    node.stub.PutKfrag(srs_pb2.PutKfragRequest(
                        partition=op["partition"], epoch=op["epoch"],
                        grantee_id=op["grantee_id"], delegating_public_key=delegating,
                        kfrag=kfrag), timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() in ANSWER_CODES:  # refused for good (e.g. the grantee is gone)
                    self.notices.append(f"{node.describe(e)}: owed operation dropped")
                else:
                    failed.add(node.index)
                    left.append(op)
        pending.save(left)
        return len(left)

    def reencrypt(self, meta, capsule: crypto.Capsule, owner_vk: bytes,
                  mine: crypto.KeyPair) -> bytes:
        """The KEM key of `capsule`, re-encrypted for the caller by t nodes, every cfrag
        verified against the owner's verifying key before it is used."""
        req = srs_pb2.ReEncryptRequest(owner_id=meta.owner_id, partition=meta.partition,
                                       epoch=meta.epoch, capsules=[capsule.to_bytes()],
                                       record_id=meta.record_id)
        done, futures = self._start([(node, "ReEncrypt", req) for node in self.nodes])
        delegating = None
        by_precursor: dict[bytes, list[crypto.CapsuleFrag]] = {}
        verified, away, answers = 0, [], []
        try:
            for _ in futures:
                node, fut = done.get()
                try:
                    resp = fut.result()
                except grpc.RpcError as e:
                    (answers if e.code() in ANSWER_CODES else away).append((node, e))
                    continue
                try:
                    key, cfrag = _check_cfrag(resp, capsule, owner_vk, delegating, mine.public)
                except ValueError as why:
                    self.notices.append(f"node {node.index} ({node.url}) returned a {why}; it was "
                                        "skipped")
                    away.append((node, f"node {node.index}: {why}"))
                    continue
                delegating = key if delegating is None else delegating
                verified += 1
                group = by_precursor.setdefault(crypto.encode_point(cfrag.precursor), [])
                group.append(cfrag)
                if len(group) == self.threshold:
                    return crypto.decapsulate_reencrypted(mine.secret, delegating, capsule, group)
        finally:
            for fut in futures:  # the read does not wait for the rest
                fut.cancel()
        # Fewer than t: an answer (not entitled, unknown) is what the caller needs to hear,
        # unless nodes were merely away.
        if not away and answers:
            node, e = answers[0]
            raise node.error(e)
        why = [x if isinstance(x, str) else n.describe(x) for n, x in away + answers]
        mixed = (f" ({verified} valid cfrags came from different kfrag sharings: a node still "
                 "holds a share of an earlier grant)" if verified >= self.threshold else "")
        raise ClientError(
            f"SRS nodes: unavailable: {max(map(len, by_precursor.values()), default=0)} of the "
            f"{self.threshold} re-encryption nodes a read needs gave a valid cfrag "
            f"({len(self.nodes)} in the mesh){mixed}; no usable answer from: {'; '.join(why)}",
            grpc.StatusCode.UNAVAILABLE)


def _check_cfrag(resp, capsule: crypto.Capsule, owner_vk: bytes, agreed, my_pk):
    """One node's answer for one capsule: exactly one cfrag, which verifies under the owner's
    key and the same delegating key as the others. ValueError says what is wrong with it."""
    if len(resp.cfrags) != 1:
        raise ValueError("answer with other than one cfrag for one capsule")
    try:
        delegating = crypto.decode_point(resp.delegating_public_key, "delegating key")
    except crypto.Malformed:
        raise ValueError("malformed delegating key") from None
    if agreed is not None and delegating != agreed:
        raise ValueError("delegating key other nodes did not give")
    try:
        cfrag = crypto.CapsuleFrag.from_bytes(resp.cfrags[0])
    except crypto.Malformed:
        raise ValueError("malformed cfrag") from None
    try:
        return delegating, cfrag.verify(capsule, owner_vk, delegating, my_pk)
    except crypto.VerificationFailed:
        raise ValueError("cfrag that does not verify against the owner's kfrags") from None


# Sessions -----------------------------------------------------------------------------------
def unix_now() -> int:
    return int(time.time())


class Session:
    """One user's mTLS connections to the three services and the re-encryption nodes, each
    reached only if it presents its own SPIFFE id (`service/<name>`, `service/srs-node/<i>`)."""

    def __init__(self, mesh: MeshFile, home: str | os.PathLike):
        self.profile = Profile(home)
        if self.profile.trust_domain != mesh.trust_domain:
            raise ClientError(f"profile is for trust domain {self.profile.trust_domain}, mesh file "
                              f"for {mesh.trust_domain}")
        self.mesh = mesh
        self.master = self.profile.master_secret()
        self.pins = PinStore(self.profile.home)
        self.pending = Pending(self.profile.home)
        self.notices: list[str] = []  # what went wrong at single nodes while calls succeeded
        self.call_timeout = mesh.timeouts.unary
        ca = self.profile.tls_files()[0]
        cert, key = self.profile.home / "tls.pem", self.profile.home / "tls.key"
        self._pinned: dict[str, PinnedChannel] = {}
        self.nodes = None
        try:
            for service, url, name in (("CloudStorage", mesh.cloud_storage, "cloud-storage"),
                                       ("SRS", mesh.srs, "srs"),
                                       ("AccessPolicy", mesh.access_policy, "access-policy")):
                self._pinned[service] = PinnedChannel(url, mesh.service_identity(name), ca, cert,
                                                      key, mesh.timeouts.connect)
            self.nodes = Nodes(mesh, ca, cert, key, self.notices)
        except BaseException:
            self.close()
            raise
        self.cloud = cs_grpc.CloudStorageStub(self._pinned["CloudStorage"].channel)
        self.srs = srs_pb2_grpc.SrsStub(self._pinned["SRS"].channel)
        self.policy = ap_grpc.AccessPolicyStub(self._pinned["AccessPolicy"].channel)

    def close(self) -> None:
        for ch in self._pinned.values():
            ch.close()
        if self.nodes is not None:
            self.nodes.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def take_notices(self) -> list[str]:
        """The notices so far, emptied."""
        out = list(self.notices)
        self.notices.clear()
        return out

    @property
    def user_id(self) -> str:
        return self.profile.user_id

    def _error(self, service: str, err: grpc.RpcError) -> ClientError:
        return self._pinned[service].explain(_rpc(service, err))

    def _call(self, service: str, method, request):
        try:
            return method(request, timeout=self.call_timeout)
        except grpc.RpcError as e:
            raise self._error(service, e) from None

    def invite(self, user_id: str, role: str, valid_for_secs: int = 0) -> Invitation:
        """Srs/Invite as this user: a patient invites family and friends (the mesh refuses
        other roles, ids already enrolled, and more than 16 of her invitations unused at a
        time). `valid_for_secs` 0 is the default, 7 days; at most 30 days."""
        return _invite(self.srs, lambda m, r: self._call("SRS", m, r), user_id, role,
                       valid_for_secs)

    def renew(self, csr_der: bytes):
        """Srs/Renew: a new certificate for the TLS key of `csr_der`, authenticated by this
        profile's current, unexpired one. The raw answer, checked to name this user; nothing
        is written (`renew_certificate` does)."""
        resp = self._call("SRS", self.srs.Renew, srs_pb2.RenewRequest(csr_der=csr_der))
        if not resp.certificate_pem:
            raise ClientError("the SRS renewed nothing: no certificate in its answer")
        return resp

    def renew_certificate(self) -> int:
        """Renews this profile's certificate for its current TLS key and replaces `tls.pem`
        (atomically; the key stays, so a crash leaves the old or the new certificate, both
        for this key). Returns the new expiry (unix seconds). The open connections keep the
        old certificate; new sessions use the new one."""
        key_pem = (self.profile.home / "tls.key").read_bytes()
        csr_der, _ = make_csr(key_pem)
        resp = self.renew(csr_der)
        expected = spiffe_id(self.profile.trust_domain, self.profile.role, self.user_id)
        not_after = check_issued(resp.certificate_pem, expected, key_pem)
        _write_public(self.profile.home / "tls.pem", resp.certificate_pem)
        return not_after

    def lookup(self, user_id: str):
        """The raw `Srs/GetUser` answer, unchecked and unpinned."""
        return self._call("SRS", self.srs.GetUser, srs_pb2.GetUserRequest(user_id=user_id))

    # Devices ----------------------------------------------------------------------------------
    def list_devices(self) -> list:
        """Srs/ListDevices: this user's devices that were not removed, oldest first (each with
        name, added_at, issued_at, not_after, and `current` for the one this profile runs on)."""
        return list(self._call("SRS", self.srs.ListDevices, srs_pb2.ListDevicesRequest()).devices)

    def remove_device(self, name: str) -> int:
        """Srs/RemoveDevice: every certificate the device `name` got is revoked (services
        refuse it within the deny list's staleness bound) and it renews nothing. Not the
        device this profile runs on. Returns until when its certificates are on the deny list
        (unix seconds; 0 when they had all expired)."""
        if not name:
            raise ClientError("which device? (see `devices`)")
        return self._call("SRS", self.srs.RemoveDevice,
                          srs_pb2.RemoveDeviceRequest(name=name)).revoked_until

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
        """The KEM key: directly for the owner; from t re-encryption nodes for a grantee, every
        cfrag verified against the owner's (pinned) verifying key."""
        capsule = header.capsule
        if self.profile.role == "patient" and meta.owner_id == self.user_id:
            sk = self.master.partition_keys(meta.partition, meta.epoch).secret
            return crypto.decapsulate_original(sk, capsule)
        return self.nodes.reencrypt(meta, capsule, owner_vk, self.master.receiving_keys())

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
            raise self._error("CloudStorage", e) from None
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

    # The audit log, checked here ---------------------------------------------------------
    def _audit(self) -> AuditConfig:
        if self.mesh.audit is None:
            raise ClientError("the mesh file has no [audit] section: without the audit log's "
                              "key and witnesses its checkpoints cannot be checked")
        return self.mesh.audit

    def audit_entries(self, after_seq: int = 0) -> list:
        """`AccessPolicy/ListAudit`, page after page: the entries after `after_seq` this user
        may see, checked (as the Rust client does) to come at most AUDIT_PAGE a reply, in
        strictly increasing order, at most MAX_AUDIT_ENTRIES in all."""
        out: list = []
        after = after_seq
        while True:
            got = 0
            try:
                for e in self.policy.ListAudit(
                        ap_pb.ListAuditRequest(after_seq=after, limit=AUDIT_PAGE),
                        timeout=self.call_timeout):
                    got += 1
                    if got > AUDIT_PAGE:
                        raise ClientError(f"AccessPolicy sent more than the {AUDIT_PAGE} audit "
                                          "entries asked for in one reply")
                    if e.seq <= after:
                        raise ClientError(f"AccessPolicy sent audit entry #{e.seq} after "
                                          f"#{after}: sequence numbers must increase")
                    if len(out) >= MAX_AUDIT_ENTRIES:
                        raise ClientError(f"AccessPolicy sent more than {MAX_AUDIT_ENTRIES} "
                                          "audit entries (the client's bound)")
                    after = e.seq
                    out.append(e)
            except grpc.RpcError as err:
                raise self._error("AccessPolicy", err) from None
            if got == 0:
                return out

    def _signed_checkpoint(self, resp) -> tlog.SignedCheckpoint:
        cfg = self._audit()
        try:
            cp = tlog.Checkpoint.parse(resp.checkpoint)
            if cp.origin != cfg.origin:
                raise tlog.CheckpointError(f"it is of log {cp.origin!r}, not this mesh's "
                                           f"{cfg.origin!r}")
            signed = tlog.SignedCheckpoint(cp, bytes(resp.signature), tuple(
                tlog.Cosignature(c.witness, c.time, bytes(c.signature))
                for c in resp.cosignatures))
            tlog.verify_witnessed(cfg.log_key, signed, cfg.witness_keys(), cfg.witness_quorum)
        except tlog.TlogError as e:
            raise ClientError(f"AccessPolicy: audit checkpoint refused: {e}") from None
        return signed

    def audit_checkpoint(self) -> tlog.SignedCheckpoint:
        """The newest audit checkpoint with the mesh file's quorum of cosignatures, checked
        (log signature, cosignatures, origin) and, by a consistency proof, to extend the one
        this profile pinned before (`audit-head.toml`), which it then replaces."""
        cfg = self._audit()
        resp = self._call("AccessPolicy", self.policy.GetCheckpoint,
                          ap_pb.GetCheckpointRequest(min_cosignatures=cfg.witness_quorum))
        signed = self._signed_checkpoint(resp)
        head = AuditHead(self.profile.home)
        pinned = head.load()
        if pinned is not None:
            old, new = pinned.checkpoint, signed.checkpoint
            self.check_consistent(old, new)
            if new.size == old.size and new.time < old.time:
                return signed  # an older head of the same tree: keep the newer pin
        head.save(signed)
        return signed

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        resp = self._call("AccessPolicy", self.policy.GetConsistencyProof,
                          ap_pb.GetConsistencyProofRequest(first=first, second=second))
        return [bytes(x) for x in resp.hashes]

    def check_consistent(self, old: tlog.Checkpoint, new: tlog.Checkpoint) -> None:
        """That `new` extends `old` (same origin, not smaller, a consistency proof from
        AccessPolicy when it is larger); ClientError naming the break otherwise."""
        proof = self.consistency_proof(old.size, new.size) if 0 < old.size < new.size else []
        try:
            tlog.check_advance(old, new, proof)
        except tlog.Inconsistency as e:
            raise ClientError(f"AccessPolicy: the audit log is not the one seen before: {e}"
                              ) from None

    def prove_entries(self, entries, signed: tlog.SignedCheckpoint) -> None:
        """That each audit entry is, as listed, leaf seq - 1 of the tree `signed` commits to
        (inclusion proofs from AccessPolicy, 256 at a time). An entry at or past the
        checkpoint's size cannot be proven yet: ClientError."""
        size = signed.checkpoint.size
        leaves: dict[int, bytes] = {}
        try:
            for e in entries:
                i = tlog.entry_leaf_index(e)
                if i >= size:
                    raise ClientError(f"audit entry {e.seq} is not in the checkpoint of size "
                                      f"{size} yet")
                leaf = tlog.entry_leaf_hash(e)
                if leaves.setdefault(i, leaf) != leaf:
                    raise ClientError(f"AccessPolicy: two different audit entries {e.seq}")
        except tlog.TlogError as err:
            raise ClientError(f"AccessPolicy: {err}") from None
        wanted = sorted(leaves)
        for start in range(0, len(wanted), 256):
            chunk = wanted[start:start + 256]
            resp = self._call("AccessPolicy", self.policy.GetInclusionProofs,
                              ap_pb.GetInclusionProofsRequest(tree_size=size, leaf_indexes=chunk))
            got = {p.leaf_index: p for p in resp.proofs}
            if resp.tree_size != size or len(resp.proofs) != len(chunk) or set(got) != set(chunk):
                raise ClientError(f"AccessPolicy: GetInclusionProofs answered for tree size "
                                  f"{resp.tree_size} and leaves {sorted(got)[:8]}, not size "
                                  f"{size} and the {len(chunk)} leaves asked")
            for i in chunk:
                try:
                    tlog.verify_inclusion(i, size, leaves[i], got[i].hashes,
                                          signed.checkpoint.root)
                except tlog.ProofError as err:
                    raise ClientError(f"AccessPolicy: audit entry {i + 1} is not in the log as "
                                      f"listed: {err}") from None

    def grants(self):
        return self._call("AccessPolicy", self.policy.ListGrants, ap_pb.ListGrantsRequest())


class Patient(Session):
    """A patient: owns records, uploads, grants, revokes and rotates."""

    def __init__(self, mesh: MeshFile, home: str | os.PathLike):
        super().__init__(mesh, home)
        if self.profile.role != "patient":
            self.close()
            raise ClientError(f"{self.user_id} is a {self.profile.role}, not a patient")
        self.unreached: list[int] = []  # nodes the last revocation could not reach

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
            raise (failure[0] if failure else self._error("CloudStorage", e)) from None
        if failure:
            raise failure[0]
        return resp.record

    def upload_bytes(self, partition: str, data: bytes, **kw):
        import io
        return self.upload(partition, io.BytesIO(data), len(data), **kw)

    def _put_kfrags(self, partition: str, epoch: int, grantee: UserKeys) -> None:
        """Share i of the grantee's t-of-n node-bound kfrags (docs/crypto.md §7.4) to node i."""
        self.nodes.put_grant(self.user_id, partition, epoch,
                             self.master.partition_keys(partition, epoch),
                             self.master.signing_key(), grantee, self.pending)

    def retry_pending(self) -> int:
        """Sends the owed node operations again; returns how many are still owed."""
        return self.nodes.retry(self.pending)

    def _settle_pending(self) -> None:
        """Owed node operations first, so that a later decision is never overtaken by an
        earlier one; nodes still away stay owed."""
        still = self.retry_pending()
        if still:
            self.notices.append(f"{still} node operation(s) still owed (see `retry`)")

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
        self._settle_pending()
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
        does), then at AccessPolicy (effective at once), then the kfrag shares at every node;
        the nodes that could not be reached are owed the deletion (`self.unreached`)."""
        _check_partition(partition)
        _check_user_id(grantee_id)
        self.ledger.record_revoke(partition, grantee_id, unix_now())
        # Shares still owed to this grantee are never delivered now.
        self.pending.drop_puts(partition, grantee_id)
        self._settle_pending()
        resp = self._call("AccessPolicy", self.policy.Revoke,
                          ap_pb.RevokeRequest(partition=partition, grantee_id=grantee_id))
        got = resp.grant
        if (not resp.HasField("grant") or got.owner_id != self.user_id
                or got.partition != partition or got.grantee_id != grantee_id):
            raise ClientError(f"verification failed: AccessPolicy acknowledged revoking another "
                              f"grant than {partition} from {grantee_id}; your ledger has it "
                              "revoked, so no rotation will include them")
        self.unreached = self.nodes.delete_grant(partition, grantee_id, self.pending)
        return got

    def rotate(self, partition: str) -> int:
        """Moves `partition` to a new key epoch. The grantees active in the ledger (never
        AccessPolicy's list) get kfrags for it first; the epoch is saved only if all succeeded."""
        _check_partition(partition)
        nxt = self.profile.current_epoch(partition) + 1
        if nxt >= 2**32:
            raise ClientError("no epochs left")
        self._settle_pending()
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


class Operator:
    """An operator's mTLS connections to the SRS setup service and AccessPolicy, with an
    operator certificate of the service CA (`sesphrd dev`: DIR/pki/operator.pem and
    operator.key) and trusting `ca_file` (default: the mesh file's CA, which `sesphrd dev`
    writes as DIR/pki/ca.pem). Each server must present its own SPIFFE id."""

    def __init__(self, mesh: MeshFile, cert_file: str | os.PathLike, key_file: str | os.PathLike,
                 ca_file: str | os.PathLike | None = None):
        self.mesh = mesh
        self.call_timeout = mesh.timeouts.unary
        cert, key = Path(cert_file), Path(key_file)
        try:
            ca = Path(ca_file).read_bytes() if ca_file is not None else mesh.ca.read_bytes()
            for f in (cert, key):
                f.stat()
        except OSError as e:
            raise ClientError(f"operator identity: {e}") from None
        self._pinned: dict[str, PinnedChannel] = {}
        try:
            for service, url, name in (("SRS", mesh.srs, "srs"),
                                       ("AccessPolicy", mesh.access_policy, "access-policy")):
                self._pinned[service] = PinnedChannel(url, mesh.service_identity(name), ca, cert,
                                                      key, mesh.timeouts.connect)
        except BaseException:
            self.close()
            raise
        self.srs = srs_pb2_grpc.SrsStub(self._pinned["SRS"].channel)
        self.policy = ap_grpc.AccessPolicyStub(self._pinned["AccessPolicy"].channel)

    def close(self) -> None:
        for ch in self._pinned.values():
            ch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, service: str, method, request):
        try:
            return method(request, timeout=self.call_timeout)
        except grpc.RpcError as e:
            raise self._pinned[service].explain(_rpc(service, e)) from None

    def invite(self, user_id: str, role: str, valid_for_secs: int = 0) -> Invitation:
        """Srs/Invite: a single-use invitation for `user_id` as `role` (any role), valid for
        `valid_for_secs` (0: the default, 7 days; at most 30 days). For an id already
        enrolled with that role it is a re-invitation (`reenrollment`), which admits the same
        keys again; another role is refused."""
        return _invite(self.srs, lambda m, r: self._call("SRS", m, r), user_id, role,
                       valid_for_secs)

    def _set_status(self, method, user_id: str, reason: str):
        _check_user_id(user_id)
        if len(reason.encode()) > 256:
            raise ClientError("the reason is at most 256 bytes")
        return self._call("AccessPolicy", method,
                          ap_pb.SetUserStatusRequest(user_id=user_id, reason=reason))

    def disable(self, user_id: str, reason: str = ""):
        """AccessPolicy/DisableUser: from now on every grant to the user is denied, and every
        service and node refuses the user's calls within seconds ("user disabled"). The
        answer says whether the status `changed` and the deny list's `version`."""
        return self._set_status(self.policy.DisableUser, user_id, reason)

    def enable(self, user_id: str, reason: str = ""):
        """AccessPolicy/EnableUser: the user's calls and grants work again."""
        return self._set_status(self.policy.EnableUser, user_id, reason)


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

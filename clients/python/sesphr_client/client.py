"""The SeSPHR flows over gRPC + mTLS, mirroring the Rust SDK (crates/client).

Same `mesh.toml`, same profile directory (a profile enrolled here works
with the Rust `sesphr` CLI and vice versa), same wire calls in the same
order: enroll, upload, get, grant, revoke, list, grants.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
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


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Profile:
    """`--home DIR`: profile.toml, master.key, tls.key, tls.pem, ca.pem, epochs.toml."""

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
        path = self.home / "epochs.toml"
        try:
            return dict(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            return {}
        except tomllib.TOMLDecodeError as e:
            raise ClientError(f"{path}: {e}") from None

    def current_epoch(self, partition: str) -> int:
        return int(self.epochs().get(partition, 0))


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
    return Profile.create(home, user_id, role, mesh.trust_domain, master, key_pem,
                          resp.certificate_pem.encode(), ca_pem)


# Sessions -----------------------------------------------------------------------------------
class Session:
    """One user's mTLS connections to the three services."""

    def __init__(self, mesh: MeshFile, home: str | os.PathLike):
        self.profile = Profile(home)
        if self.profile.trust_domain != mesh.trust_domain:
            raise ClientError(f"profile is for trust domain {self.profile.trust_domain}, mesh file "
                              f"for {mesh.trust_domain}")
        self.master = self.profile.master_secret()
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
        return self._call("SRS", self.srs.GetUser, srs_pb2.GetUserRequest(user_id=user_id))

    # Reading ------------------------------------------------------------------------------
    def _record_key(self, meta, header: crypto.RecordHeader) -> bytes:
        """The KEM key: directly for the owner; through the SRS for a grantee."""
        capsule = header.capsule
        if self.profile.role == "patient" and meta.owner_id == self.user_id:
            sk = self.master.partition_keys(meta.partition, meta.epoch).secret
            return crypto.decapsulate_original(sk, capsule)
        resp = self._call("SRS", self.srs.ReEncrypt, srs_pb2.ReEncryptRequest(
            owner_id=meta.owner_id, partition=meta.partition, epoch=meta.epoch,
            capsules=[capsule.to_bytes()], record_id=meta.record_id))
        owner = self.lookup(meta.owner_id)
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
                verified.append(cfrag.verify(capsule, owner.verifying_key, delegating, mine.public))
            except crypto.CryptoError:
                raise ClientError(f"verification failed: cfrag {i} carries no valid proof of "
                                  f"re-encryption from {meta.owner_id}'s kfrags") from None
        return crypto.decapsulate_reencrypted(mine.secret, delegating, capsule, verified)

    def download(self, record_id: str, out: BinaryIO):
        """Downloads and decrypts a record into `out`, segment by segment. Returns its meta."""
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
            blob_hash = None
            if meta.blob_id:
                # A deduplicated record: the capsule's key unwraps the
                # blob's content key (crates/dedup/README.md).
                if header.key_source != 1:
                    raise ClientError("verification failed: a deduplicated record must use an "
                                      "external key")
                kem_key = self._record_key(meta, header)
                opener = crypto.BlobOpener(crypto.unwrap_content_key(
                    kem_key, meta.wrapped_content_key, meta.record_header))
                blob_hash = hashlib.sha256()
            elif header.key_source != 0:
                raise ClientError("verification failed: a record with its own ciphertext must take "
                                  "its key from its capsule")
            else:
                opener = crypto.RecordOpener(header, crypto.dem_key(self._record_key(meta, header)))
            for msg in stream:
                if msg.WhichOneof("part") != "chunk":
                    raise ClientError("verification failed: CloudStorage sent metadata twice")
                if blob_hash is not None:
                    blob_hash.update(msg.chunk)
                for seg in opener.push(msg.chunk):
                    out.write(seg)
            out.write(opener.finish())
            out.flush()
            if blob_hash is not None and blob_hash.digest() != meta.blob_id:
                raise ClientError("verification failed: the blob does not match its id")
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
    """A patient: owns records, uploads, grants and revokes."""

    def __init__(self, mesh: MeshFile, home: str | os.PathLike):
        super().__init__(mesh, home)
        if self.profile.role != "patient":
            self.close()
            raise ClientError(f"{self.user_id} is a {self.profile.role}, not a patient")

    def upload(self, partition: str, src: BinaryIO, length: int,
               segment_size: int = crypto.DEFAULT_SEGMENT_SIZE):
        """Encrypts `length` bytes from `src` under the partition's current key epoch while
        streaming them to CloudStorage. Returns the stored record's meta."""
        _check_partition(partition)
        epoch = self.profile.current_epoch(partition)
        pk = self.master.partition_keys(partition, epoch).public
        capsule, kem_key = crypto.encapsulate(pk)
        record_id = os.urandom(16).hex()
        header = crypto.RecordHeader.new(record_id.encode(), self.user_id.encode(), partition,
                                         epoch, capsule, segment_size)

        failure: list[BaseException] = []

        def requests() -> Iterator:
            yield cs_pb.PutRecordRequest(header=cs_pb.RecordUpload(
                record_id=record_id, partition=partition, epoch=epoch,
                record_header=header.to_bytes(),
                ciphertext_size=crypto.ciphertext_len(length, header.segment_size)))
            try:
                for sealed in crypto.seal_segments(header, crypto.dem_key(kem_key), length, src.read):
                    yield cs_pb.PutRecordRequest(chunk=sealed)
                if src.read(1):
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

    def _put_kfrags(self, partition: str, epoch: int, grantee) -> None:
        try:
            grantee_pk = crypto.decode_point(grantee.pre_public_key, "grantee key")
        except crypto.Malformed:
            raise ClientError(f"verification failed: {grantee.user_id}'s registered key is "
                              "malformed") from None
        keys = self.master.partition_keys(partition, epoch)
        kfrags = crypto.generate_kfrags(keys.secret, grantee_pk, self.master.signing_key(), 1, 1)
        self._call("SRS", self.srs.PutKfrags, srs_pb2.PutKfragsRequest(
            partition=partition, epoch=epoch, grantee_id=grantee.user_id,
            delegating_public_key=keys.public_bytes(), kfrags=[k.to_bytes() for k in kfrags]))

    def grant(self, partition: str, grantee_id: str, not_before: int | None = None,
              expires_at: int | None = None):
        """Kfrags for each covered epoch to the grantee's registered key, then the grant."""
        _check_partition(partition)
        _check_user_id(grantee_id)
        if grantee_id == self.user_id:
            raise ClientError("you already own your records")
        grantee = self.lookup(grantee_id)
        current = self.profile.current_epoch(partition)
        epoch_min = current if not_before is not None else 0
        for epoch in range(epoch_min, current + 1):
            self._put_kfrags(partition, epoch, grantee)
        grant = ap_pb.AccessGrant(owner_id=self.user_id, partition=partition, grantee_id=grantee_id,
                                  grantee_role=grantee.role, epoch_min=epoch_min,
                                  not_before=not_before or 0)
        if expires_at is not None:
            grant.expires_at = expires_at
        return self._call("AccessPolicy", self.policy.Grant, ap_pb.GrantRequest(grant=grant)).grant

    def revoke(self, partition: str, grantee_id: str):
        """At AccessPolicy first (effective at once), then the kfrags at the SRS."""
        _check_partition(partition)
        _check_user_id(grantee_id)
        removed = self._call("AccessPolicy", self.policy.Revoke,
                             ap_pb.RevokeRequest(partition=partition, grantee_id=grantee_id))
        self._call("SRS", self.srs.DeleteKfrags,
                   srs_pb2.DeleteKfragsRequest(partition=partition, grantee_id=grantee_id))
        return removed.grant


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

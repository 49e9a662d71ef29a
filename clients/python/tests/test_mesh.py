"""Interoperability against a real `sesphrd dev` mesh: Rust CLI ↔ Python client.

(1) a record the Rust CLI uploads as patient is read by a Python grantee;
(2) a record the Python client uploads and grants is read by the Rust CLI;
(3) the Python client is refused without a grant (by every re-encryption
node), after revocation, without a client certificate and with a certificate
of another CA;
(4) a record whose segments someone other than its owner signed is refused by
both clients, and a changed pinned key is refused until confirmed; both clients
read each other's known_keys.toml and grants.toml.
"""

from __future__ import annotations

import datetime
import io
import os
import tomllib

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sesphr_client import crypto
from sesphr_client.client import (ClientError, KeyChanged, MeshFile, Patient, Session, cs_pb,
                                  fingerprint, secure_channel, srs_pb2, srs_pb2_grpc, ap_pb, ap_grpc, cs_grpc)

SEG = crypto.DEFAULT_SEGMENT_SIZE


def test_rust_patient_upload_read_by_python_grantee(mesh, tmp_path):
    mesh.enroll("rust", "alice", "patient")
    mesh.enroll("py", "bob", "doctor")
    mesh.rust("alice", "grant", "--partition", "medical", "--to", "bob")
    # 2.5 segments: two full non-last segments and a short last one.
    data = os.urandom(2 * SEG + SEG // 2)
    src = tmp_path / "labs.bin"
    src.write_bytes(data)
    rid = mesh.rust("alice", "upload", "--partition", "medical", str(src)).stdout.decode().strip()

    out = tmp_path / "labs.out"
    mesh.py("bob", "get", rid, "-o", str(out))
    assert out.read_bytes() == data
    # Same through the library, and stdout of the CLI.
    with Session(MeshFile.load(mesh.mesh_file), mesh.home("bob")) as bob:
        assert bob.get(rid) == data
        assert [r.record_id for r in bob.list(owner="alice")] == [rid]
    assert mesh.py("bob", "get", rid).stdout == data
    # Reading pinned alice's key in bob's profile (Python wrote it); the Rust CLI
    # finds it equal to what the SRS presents, and vice versa for alice's pin of bob.
    pins = tomllib.loads((mesh.home("bob") / "known_keys.toml").read_text())
    assert set(pins) == {"alice"} and pins["alice"]["role"] == "patient"
    assert b"pinned (matches" in mesh.rust("bob", "whois", "alice").stderr
    assert b"pinned (matches" in mesh.py("alice", "whois", "bob").stderr
    assert (mesh.rust("alice", "whois", "bob").stdout
            == mesh.py("alice", "whois", "bob").stdout)  # same fingerprint

    # After a key rotation by the Rust CLI, new records use epoch 1 and the
    # Python grantee still reads them (rotation hands it kfrags for epoch 1).
    assert mesh.rust("alice", "rotate", "--partition", "medical").stdout.decode().strip() == "1"
    small = tmp_path / "note.txt"
    small.write_bytes(b"epoch one")
    rid1 = mesh.rust("alice", "upload", "--partition", "medical", str(small)).stdout.decode().strip()
    assert mesh.py("bob", "get", rid1).stdout == b"epoch one"
    with Session(MeshFile.load(mesh.mesh_file), mesh.home("bob")) as bob:
        assert {r.record_id: r.epoch for r in bob.list(owner="alice")} == {rid: 0, rid1: 1}


def test_python_patient_upload_and_grant_read_by_rust_grantee(mesh, tmp_path):
    mesh.enroll("py", "carol", "patient")
    mesh.enroll("rust", "dave", "nurse")
    # Like the Rust enroll, the Python one writes an empty grant ledger.
    assert (mesh.home("carol") / "grants.toml").read_text() == ""
    # Exactly two segments: the last one is full and sealed as last.
    data = os.urandom(2 * SEG)
    src = tmp_path / "scan.bin"
    src.write_bytes(data)
    rid = mesh.py("carol", "upload", "--partition", "medical", str(src)).stdout.decode().strip()
    mesh.py("carol", "grant", "--partition", "medical", "--to", "dave", "--for", "1d")

    out = tmp_path / "scan.out"
    mesh.rust("dave", "get", rid, "-o", str(out))
    assert out.read_bytes() == data
    # The profile the Python client enrolled works with the Rust CLI (owner path).
    assert mesh.rust("carol", "get", rid).stdout == data
    # The Rust CLI finds AccessPolicy in agreement with the ledger Python kept.
    grants = mesh.rust("carol", "grants").stdout.decode()
    assert "given\tcarol\tmedical\tdave\tnurse" in grants
    entry = tomllib.loads((mesh.home("carol") / "grants.toml").read_text())["medical"]["dave"]
    assert entry["role"] == "nurse" and entry["epoch_min"] == 0 and "revoked_at" not in entry
    assert entry["expires_at"] > entry["granted_at"]

    # An empty record, and a Python upload after a Rust rotation of the same
    # profile (epochs.toml is shared): encrypted under epoch 1.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    rid_empty = mesh.py("carol", "upload", "--partition", "medical", str(empty)).stdout.decode().strip()
    assert mesh.rust("dave", "get", rid_empty).stdout == b""
    mesh.rust("carol", "rotate", "--partition", "medical")
    with Patient(MeshFile.load(mesh.mesh_file), mesh.home("carol")) as carol:
        meta = carol.upload_bytes("medical", b"after rotation")
        assert meta.epoch == 1
    assert mesh.rust("dave", "get", meta.record_id).stdout == b"after rotation"


@pytest.fixture(scope="module")
def shared(mesh):
    """A Python patient with one record, and a Python practitioner without a grant."""
    mesh.enroll("py", "erin", "patient")
    mesh.enroll("py", "frank", "friend")
    meshfile = MeshFile.load(mesh.mesh_file)
    with Patient(meshfile, mesh.home("erin")) as erin:
        rid = erin.upload_bytes("personal", b"diary").record_id
    return meshfile, rid


def reencrypt_request(rid: str):
    # Any valid capsule will do: a node checks the grant before looking at it.
    capsule, _ = crypto.encapsulate(crypto.KeyPair.random().public)
    return srs_pb2.ReEncryptRequest(owner_id="erin", partition="personal", epoch=0,
                                    capsules=[capsule.to_bytes()], record_id=rid)


def test_refused_without_grant(mesh, shared):
    meshfile, rid = shared
    with Session(meshfile, mesh.home("frank")) as frank:
        with pytest.raises(ClientError) as err:
            frank.get(rid)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        for node in frank.nodes.nodes:  # every node asks AccessPolicy itself
            with pytest.raises(grpc.RpcError) as rpc:
                node.stub.ReEncrypt(reencrypt_request(rid), timeout=30)
            assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert frank.list(owner="erin") == []
    proc = mesh.py("frank", "get", rid, ok=False)
    assert proc.returncode == 1
    assert b"permission denied" in proc.stderr


def test_refused_after_revocation(mesh, shared):
    meshfile, rid = shared
    mesh.py("erin", "grant", "--partition", "personal", "--to", "frank")
    assert mesh.py("frank", "get", rid).stdout == b"diary"
    mesh.py("erin", "revoke", "--partition", "personal", "--from", "frank")
    with Session(meshfile, mesh.home("frank")) as frank:
        with pytest.raises(ClientError) as err:
            frank.get(rid)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        for node in frank.nodes.nodes:  # every node asks AccessPolicy itself
            with pytest.raises(grpc.RpcError) as rpc:
                node.stub.ReEncrypt(reencrypt_request(rid), timeout=30)
            assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with Patient(meshfile, mesh.home("erin")) as erin:
        assert [g.grantee_id for g in erin.grants().given] == []
        assert erin.audit_grants()[1] == []
    ledger = tomllib.loads((mesh.home("erin") / "grants.toml").read_text())
    assert ledger["personal"]["frank"]["revoked_at"] >= ledger["personal"]["frank"]["granted_at"]
    mesh.rust("erin", "grants")  # exits non-zero if the ledger disagreed with AccessPolicy
    mesh.py("erin", "grants")  # likewise
    # A grant only the ledger knows of (as if AccessPolicy had dropped it) is reported by both.
    ledger_path = mesh.home("erin") / "grants.toml"
    kept = ledger_path.read_text()
    ledger_path.write_text(kept + '\n[personal.ghost]\nrole = "doctor"\nepoch_min = 0\n'
                           'not_before = 0\ngranted_at = 1\n')
    for proc in (mesh.py("erin", "grants", ok=False), mesh.rust("erin", "grants", ok=False)):
        assert proc.returncode != 0
        assert b"personal \xe2\x86\x92 ghost: granted by you, but AccessPolicy does not list it" \
            in proc.stderr, proc.stderr
    ledger_path.write_text(kept)
    # The revocation rotated the partition (as the Rust CLI does); nobody active got kfrags.
    assert tomllib.loads((mesh.home("erin") / "epochs.toml").read_text()) == {"personal": 1}


def calls(meshfile: MeshFile, key: bytes | None, cert: bytes | None, rid: str):
    """One call to each service over a channel with the given client identity."""
    ca = meshfile.ca.read_bytes()
    results = {}
    with secure_channel(meshfile.cloud_storage, ca, key, cert) as ch:
        stub = cs_grpc.CloudStorageStub(ch)
        results["CloudStorage/GetRecord"] = _code(lambda: list(stub.GetRecord(
            cs_pb.GetRecordRequest(record_id=rid), timeout=30)))
        results["CloudStorage/ListRecords"] = _code(lambda: stub.ListRecords(
            cs_pb.ListRecordsRequest(), timeout=30))
    with secure_channel(meshfile.srs, ca, key, cert) as ch:
        stub = srs_pb2_grpc.SrsStub(ch)
        results["Srs/GetUser"] = _code(lambda: stub.GetUser(srs_pb2.GetUserRequest(user_id="erin"),
                                                            timeout=30))
    for node in meshfile.srs_nodes:
        with secure_channel(node.url, ca, key, cert) as ch:
            results[f"SrsNode {node.index}/ReEncrypt"] = _code(lambda: srs_pb2_grpc.SrsNodeStub(
                ch).ReEncrypt(reencrypt_request(rid), timeout=30))
    with secure_channel(meshfile.access_policy, ca, key, cert) as ch:
        results["AccessPolicy/ListGrants"] = _code(lambda: ap_grpc.AccessPolicyStub(ch).ListGrants(
            ap_pb.ListGrantsRequest(), timeout=30))
    return results


def _code(fn) -> grpc.StatusCode:
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_refused_without_client_certificate(mesh, shared):
    meshfile, rid = shared
    codes = calls(meshfile, None, None, rid)
    # CloudStorage, AccessPolicy and every re-encryption node demand a certificate
    # in the TLS handshake; the SRS setup service lets certificate-less callers
    # reach Enroll only.
    assert codes == {
        "CloudStorage/GetRecord": grpc.StatusCode.UNAVAILABLE,
        "CloudStorage/ListRecords": grpc.StatusCode.UNAVAILABLE,
        "Srs/GetUser": grpc.StatusCode.UNAUTHENTICATED,
        "SrsNode 1/ReEncrypt": grpc.StatusCode.UNAVAILABLE,
        "SrsNode 2/ReEncrypt": grpc.StatusCode.UNAVAILABLE,
        "SrsNode 3/ReEncrypt": grpc.StatusCode.UNAVAILABLE,
        "AccessPolicy/ListGrants": grpc.StatusCode.UNAVAILABLE,
    }


def foreign_identity(spiffe: str) -> tuple[bytes, bytes]:
    """A CA the mesh does not trust, and a client certificate it issues for `spiffe`:
    (key PEM, certificate chain PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the mesh CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frank")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda k: k.private_bytes(serialization.Encoding.PEM,  # noqa: E731
                                    serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    return pem(key), chain


def test_refused_with_certificate_of_another_ca(mesh, shared):
    meshfile, rid = shared
    # The owner's own identity, forged under another CA.
    key, cert = foreign_identity("spiffe://sesphr.local/patient/erin")
    codes = calls(meshfile, key, cert, rid)
    assert set(codes) == {"CloudStorage/GetRecord", "CloudStorage/ListRecords", "Srs/GetUser",
                          "SrsNode 1/ReEncrypt", "SrsNode 2/ReEncrypt", "SrsNode 3/ReEncrypt",
                          "AccessPolicy/ListGrants"}
    # Every listener, the SRS's and the nodes' included, rejects a certificate it
    # cannot verify in the TLS handshake.
    assert set(codes.values()) == {grpc.StatusCode.UNAVAILABLE}, codes
    # The genuine identity still works, so the refusals above are about the certificate.
    with Patient(meshfile, mesh.home("erin")) as erin:
        assert erin.get(rid) == b"diary"


def test_segments_signed_by_another_key_are_refused(mesh, tmp_path):
    """A record whose header its owner signed but whose segments another key signed (what a
    grantee, who knows the record's AES key, could write) is refused by both clients, and
    nothing of it reaches the output file."""
    mesh.enroll("py", "gina", "patient")
    mesh.enroll("py", "ivan", "doctor")
    mesh.enroll("rust", "jack", "doctor")
    meshfile = MeshFile.load(mesh.mesh_file)
    data = os.urandom(SEG + 100)
    with Patient(meshfile, mesh.home("gina")) as gina:
        gina.grant("medical", "ivan")
        gina.grant("medical", "jack")
        genuine = gina.upload_bytes("medical", data).record_id
        forger = crypto.MasterSecret.generate().signing_key()
        rid, epoch, header, segments = gina.seal_record("medical", len(data),
                                                        io.BytesIO(data).read, signer=forger)
        gina.put_sealed(rid, "medical", epoch, header, len(data), segments)
        with pytest.raises(ClientError, match="not signed by its owner"):
            gina.get(rid)
    assert mesh.py("ivan", "get", genuine).stdout == data
    assert mesh.rust("jack", "get", genuine).stdout == data
    out = tmp_path / "forged.out"
    proc = mesh.py("ivan", "get", rid, "-o", str(out), ok=False)
    assert proc.returncode == 1 and b"not signed by its owner" in proc.stderr, proc.stderr
    assert not out.exists()
    proc = mesh.rust("jack", "get", rid, "-o", str(out), ok=False)
    assert proc.returncode != 0 and b"not signed by its owner" in proc.stderr, proc.stderr
    assert not out.exists()


def test_changed_key_is_refused_until_trusted(mesh):
    mesh.enroll("py", "kate", "patient")
    mesh.enroll("rust", "liam", "family")
    meshfile = MeshFile.load(mesh.mesh_file)
    with Patient(meshfile, mesh.home("kate")) as kate:
        rid = kate.upload_bytes("family", b"for liam").record_id
        kate.grant("family", "liam")
        real = kate.pins.pinned_fingerprint("liam")
    # The pin now names other keys (as if the SRS had changed liam's keys since).
    pins_path = mesh.home("kate") / "known_keys.toml"
    original = pins_path.read_text()
    other = crypto.MasterSecret.generate()
    pin = tomllib.loads(original)["liam"]
    fake_fp = fingerprint("liam", "family", bytes.fromhex(pin["pre_public_key"]),
                          other.signing_key().verifying_key_bytes())
    pins_path.write_text(original.replace(pin["verifying_key"],
                                          other.signing_key().verifying_key_bytes().hex())
                         .replace(real, fake_fp))
    with Patient(meshfile, mesh.home("kate")) as kate:
        with pytest.raises(KeyChanged) as err:
            kate.grant("family", "liam")
        assert err.value.pinned == fake_fp and err.value.presented == real
        assert "trust liam --fingerprint" in str(err.value)
    assert b"CHANGED" in mesh.py("kate", "whois", "liam").stderr
    assert b"CHANGED" in mesh.rust("kate", "whois", "liam").stderr
    assert mesh.py("kate", "grant", "--partition", "family", "--to", "liam", ok=False).returncode == 1
    # A wrong fingerprint pins nothing; the right one restores the pin.
    assert mesh.py("kate", "trust", "liam", "--fingerprint", fake_fp, ok=False).returncode == 1
    mesh.py("kate", "trust", "liam", "--fingerprint", real.upper())
    assert tomllib.loads(pins_path.read_text()) == tomllib.loads(original)
    mesh.py("kate", "grant", "--partition", "family", "--to", "liam")
    assert mesh.rust("liam", "get", rid).stdout == b"for liam"
    # A reader (a Rust-enrolled profile, read by Python) whose pin of the owner names other
    # keys refuses the owner's genuine records.
    liam_pins = mesh.home("liam") / "known_keys.toml"
    text = liam_pins.read_text()
    kate_vk = tomllib.loads(text)["kate"]["verifying_key"]
    liam_pins.write_text(text.replace(kate_vk, other.signing_key().verifying_key_bytes().hex()))
    proc = mesh.py("liam", "get", rid, ok=False)
    assert proc.returncode == 1 and b"not signed by its owner" in proc.stderr, proc.stderr
    liam_pins.write_text(text)
    assert mesh.py("liam", "get", rid).stdout == b"for liam"

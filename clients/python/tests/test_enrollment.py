"""Enrollment by invitation, certificate renewal and disabled users, on a real `sesphrd dev` mesh.

(1) a practitioner without an invitation is refused (PERMISSION_DENIED); a patient may
register herself (the dev mesh allows it); (2) an invitation admits its one id and role,
once, until it expires; a patient invites family and friends only; an operator's
re-invitation admits the registered keys again, with their key proof, and no others; the
key proof alone re-enrols on a new device, and the old device is removed; (3) a renewed certificate
replaces the old one and works with both clients; (4) a disabled user is refused by every
service and node ("user disabled") within 10 s, and works again after being enabled;
(5) service identities must chain to the service CA and users' to the user CA.
"""

from __future__ import annotations

import datetime
import os
import time

import grpc
import pytest
from cryptography import x509

from sesphr_client.client import (INVITATION, ClientError, MeshFile, Patient, Profile, Session,
                                  _enroll_call, ap_grpc, ap_pb, certificate_device, common_pb2,
                                  crypto, cs_grpc, cs_pb, enroll, make_csr, secure_channel,
                                  srs_pb2)

DAY = 86400
# Deactivation reaches every service within this (docs/design.md, "Deactivation").
DISABLE_BOUND = 10.0
# A removed device's certificates are refused within the deny list's staleness bound (~5 s).
DEVICE_REVOKE_BOUND = 10.0


def meshfile(mesh) -> MeshFile:
    return MeshFile.load(mesh.mesh_file)


def refused(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ClientError) as err:
        fn()
    return err.value.code, str(err.value)


def not_after(path) -> int:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return int(cert.not_valid_after_utc.timestamp())


def test_practitioner_without_invitation_is_refused(mesh):
    mf = meshfile(mesh)
    for role in ("doctor", "nurse", "family"):
        home = mesh.home(f"uninvited-{role}")
        code, text = refused(lambda: enroll(mf, home, f"uninvited-{role}", role))
        assert code == grpc.StatusCode.PERMISSION_DENIED, text
        assert "requires an invitation" in text, text
        assert not home.exists() or not (home / "profile.toml").exists()
    proc = mesh.py("uninvited-cli", "enroll", "--id", "uninvited-cli", "--role", "doctor", ok=False)
    assert proc.returncode == 1
    assert b"permission denied" in proc.stderr and b"--invitation" in proc.stderr, proc.stderr
    proc = mesh.rust("uninvited-rust", "enroll", "--id", "uninvited-rust", "--role", "doctor",
                     ok=False)
    assert proc.returncode != 0, proc.stderr
    # The directory never heard of them.
    mesh.enroll("py", "selfreg-pat", "patient")
    with Session(mf, mesh.home("selfreg-pat")) as pat:
        for who in ("uninvited-doctor", "uninvited-cli", "uninvited-rust"):
            code, _ = refused(lambda: pat.lookup(who))
            assert code == grpc.StatusCode.NOT_FOUND
        # A patient registers herself without an invitation on the dev mesh.
        assert pat.lookup("selfreg-pat").role == common_pb2.Role.Value("ROLE_PATIENT")
    cert = x509.load_pem_x509_certificate((mesh.home("selfreg-pat") / "tls.pem").read_bytes())
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://sesphr.local/patient/selfreg-pat"]
    # An id already enrolled cannot register again.
    code, text = refused(lambda: enroll(mf, mesh.home("selfreg-pat-2"), "selfreg-pat", "patient"))
    assert code == grpc.StatusCode.ALREADY_EXISTS, text


def test_invitation_works_once(mesh):
    mf = meshfile(mesh)
    before = int(time.time())
    inv = mesh.invite("once-doc", "doctor")
    assert INVITATION.match(inv.invitation) and not inv.reenrollment
    assert before + 7 * DAY - 60 <= inv.expires_at <= int(time.time()) + 7 * DAY + 60
    proc = mesh.py("once-doc", "enroll", "--id", "once-doc", "--role", "doctor",
                   "--invitation", inv.invitation)
    assert proc.stdout.decode().strip() == "spiffe://sesphr.local/practitioner/doctor/once-doc"
    assert b"pinned" in mesh.py("once-doc", "whois", "once-doc").stderr
    # The same invitation again, from another profile: used up, for both clients.
    code, text = refused(lambda: enroll(mf, mesh.home("once-doc-2"), "once-doc", "doctor",
                                        inv.invitation))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "invitation already used" in text, text
    proc = mesh.rust("once-doc-3", "enroll", "--id", "once-doc", "--role", "doctor",
                     "--invitation", inv.invitation, ok=False)
    assert proc.returncode != 0 and b"invitation already used" in proc.stderr, proc.stderr
    # An invitation from the CLI, used by the Rust CLI.
    op = ["admin", "--cert", str(mesh.pki / "operator.pem"), "--key",
          str(mesh.pki / "operator.key")]
    text = mesh.py("operator", *op, "invite", "--id", "once-nurse", "--role", "nurse", "--for",
                   "1h").stdout.decode().strip()
    assert INVITATION.match(text), text
    mesh.rust("once-nurse", "enroll", "--id", "once-nurse", "--role", "nurse",
              "--invitation", text)


def test_invitation_admits_its_id_and_role_only_until_it_expires(mesh):
    mf = meshfile(mesh)
    inv = mesh.invite("only-doc", "doctor").invitation
    code, text = refused(lambda: enroll(mf, mesh.home("not-only-doc"), "not-only-doc", "doctor",
                                        inv))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "invitation is for id" in text, text
    inv = mesh.invite("role-doc", "doctor").invitation
    code, text = refused(lambda: enroll(mf, mesh.home("role-doc"), "role-doc", "nurse", inv))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "invitation is for role" in text, text
    # An invitation nobody issued (well formed).
    forged = "inv1-" + os.urandom(32).hex()
    code, text = refused(lambda: enroll(mf, mesh.home("forged-doc"), "forged-doc", "doctor",
                                        forged))
    assert code == grpc.StatusCode.PERMISSION_DENIED, text
    with pytest.raises(ClientError, match="not an invitation"):
        enroll(mf, mesh.home("typo-doc"), "typo-doc", "doctor", "inv1-xyz")
    # Expired.
    inv = mesh.invite("late-doc", "doctor", valid_for_secs=1)
    time.sleep(max(0.0, inv.expires_at + 1.5 - time.time()))
    code, text = refused(lambda: enroll(mf, mesh.home("late-doc"), "late-doc", "doctor",
                                        inv.invitation))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "invitation expired" in text, text
    # At most 30 days.
    code, text = refused(lambda: mesh.invite("long-doc", "doctor", valid_for_secs=31 * DAY))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, text


def test_patient_invites_family_and_friends_only(mesh):
    mesh.enroll("py", "inv-pat", "patient")
    mf = meshfile(mesh)
    with Session(mf, mesh.home("inv-pat")) as pat:
        code, text = refused(lambda: pat.invite("inv-pat-doc", "doctor"))
        assert code == grpc.StatusCode.PERMISSION_DENIED, text
        code, text = refused(lambda: pat.invite("inv-pat-other", "patient"))
        assert code == grpc.StatusCode.PERMISSION_DENIED, text
        # Nor an id already enrolled.
        code, text = refused(lambda: pat.invite("inv-pat", "friend"))
        assert code == grpc.StatusCode.ALREADY_EXISTS, text
    inv = mesh.py("inv-pat", "invite", "--id", "inv-pat-mum", "--role", "family", "--for", "2d")
    invitation = inv.stdout.decode().strip()
    assert INVITATION.match(invitation), inv.stdout
    mesh.py("inv-pat-mum", "enroll", "--id", "inv-pat-mum", "--role", "family",
            "--invitation", invitation)
    with Patient(mf, mesh.home("inv-pat")) as pat:
        rid = pat.upload_bytes("family", b"for mum").record_id
        pat.grant("family", "inv-pat-mum")
    assert mesh.py("inv-pat-mum", "get", rid).stdout == b"for mum"


def test_reinvitation_admits_the_registered_keys_only(mesh):
    mesh.enroll("py", "again-doc", "doctor")
    mf = meshfile(mesh)
    home = mesh.home("again-doc")
    # Another role for an enrolled id is no re-invitation.
    code, text = refused(lambda: mesh.invite("again-doc", "nurse"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, text
    # A stranger with a re-invitation but other keys is refused...
    stolen = mesh.invite("again-doc", "doctor")
    assert stolen.reenrollment
    code, text = refused(lambda: enroll(mf, mesh.home("again-doc-thief"), "again-doc", "doctor",
                                        stolen.invitation))
    assert code == grpc.StatusCode.PERMISSION_DENIED, text
    # A re-invitation alone (no key proof, as an old client sends it) admits no one.
    bare = mesh.invite("again-doc", "doctor")
    master = Profile(home).master_secret()
    csr, _ = make_csr()
    code, text = refused(lambda: _enroll_call(mf, mf.ca.read_bytes(), srs_pb2.EnrollRequest(
        invitation=bare.invitation, user_id="again-doc", role=common_pb2.ROLE_DOCTOR,
        csr_der=csr, pre_public_key=master.receiving_keys().public_bytes(),
        verifying_key=master.signing_key().verifying_key_bytes())))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs their key proof" in text, text
    # ... and the user, with its own profile, gets a new certificate (and TLS key) for the
    # same id, on a new device.
    old_cert, old_key = (home / "tls.pem").read_bytes(), (home / "tls.key").read_bytes()
    inv = mesh.invite("again-doc", "doctor")
    assert inv.reenrollment
    proc = mesh.py("again-doc", "reenroll", "--invitation", inv.invitation)
    assert proc.stdout.decode().strip() == "spiffe://sesphr.local/practitioner/doctor/again-doc"
    assert (home / "tls.pem").read_bytes() != old_cert
    assert (home / "tls.key").read_bytes() != old_key
    assert certificate_device((home / "tls.pem").read_bytes()) != certificate_device(old_cert)
    assert b"pinned" in mesh.py("again-doc", "whois", "again-doc").stderr
    assert b"pinned" in mesh.rust("again-doc", "whois", "again-doc").stderr


def _devices(mesh, user: str) -> list[tuple[bool, str]]:
    out = mesh.py(user, "devices", "list").stdout.decode().splitlines()
    return [(line.startswith("*"), line[2:].split("\t")[0]) for line in out]


def test_reenrolment_by_key_proof_alone(mesh):
    """No invitation: the key proof of the registered keys is enough; the previous device is
    removed (its certificate refused within the deny list's bound); a proof by another key,
    or for another CSR, is refused."""
    mesh.enroll("py", "kp-pat", "patient")
    mf = meshfile(mesh)
    home = mesh.home("kp-pat")
    assert _devices(mesh, "kp-pat") == [(True, "device-1")]
    old_key, old_cert = (home / "tls.key").read_bytes(), (home / "tls.pem").read_bytes()
    with Patient(mf, home) as pat:
        rid = pat.upload_bytes("medical", b"before").record_id

    proc = mesh.py("kp-pat", "reenroll")
    assert proc.stdout.decode().strip() == "spiffe://sesphr.local/patient/kp-pat"
    assert b"note:" not in proc.stderr, proc.stderr
    assert _devices(mesh, "kp-pat") == [(True, "device-2")]
    assert mesh.rust("kp-pat", "get", rid).stdout == b"before"
    assert b"pinned" in mesh.py("kp-pat", "whois", "kp-pat").stderr
    # The old device's certificate is refused by every service within the bound.
    ca = mf.ca.read_bytes()
    deadline = time.monotonic() + DEVICE_REVOKE_BOUND
    while True:
        with secure_channel(mf.cloud_storage, ca, old_key, old_cert) as ch:
            try:
                cs_grpc.CloudStorageStub(ch).ListRecords(cs_pb.ListRecordsRequest(), timeout=10)
                err = None
            except grpc.RpcError as e:
                err = e
        if err is not None:
            break
        assert time.monotonic() < deadline, "the removed device is still served"
        time.sleep(0.25)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert "(device-1) was removed by its user" in err.details(), err.details()

    # A proof by another key (a thief who knows the id, not the master secret) is refused,
    # and so is a proof of the right key made for another CSR.
    master = Profile(home).master_secret()
    thief = crypto.MasterSecret.generate().signing_key()

    def attempt(signer, proof_csr=None, role=common_pb2.ROLE_UNSPECIFIED):
        csr, _ = make_csr()
        return _enroll_call(mf, ca, srs_pb2.EnrollRequest(
            user_id="kp-pat", role=role, csr_der=csr,
            key_proof=crypto.sign_key_proof(signer, mf.trust_domain, "kp-pat",
                                            proof_csr or csr)))
    for bad in (lambda: attempt(thief), lambda: attempt(master.signing_key(), b"other csr"),
                lambda: attempt(thief, role=common_pb2.ROLE_PATIENT)):
        code, text = refused(bad)
        assert code == grpc.StatusCode.PERMISSION_DENIED, text
        assert "does not verify" in text, text
    # The right key with the role left to the directory: a new device.
    resp = attempt(master.signing_key())
    assert resp.spiffe_id == "spiffe://sesphr.local/patient/kp-pat" and resp.device == "device-3"
    assert [n for _, n in _devices(mesh, "kp-pat")] == ["device-2", "device-3"]
    # A device cannot remove itself; another one can remove it.
    proc = mesh.py("kp-pat", "devices", "remove", "device-2", ok=False)
    assert proc.returncode == 1 and b"the one this call comes from" in proc.stderr, proc.stderr
    proc = mesh.py("kp-pat", "devices", "remove", "device-9", ok=False)
    assert proc.returncode == 1 and b"not found" in proc.stderr, proc.stderr
    proc = mesh.py("kp-pat", "devices", "remove", "device-3")
    assert b"removed device device-3" in proc.stderr, proc.stderr
    assert _devices(mesh, "kp-pat") == [(True, "device-2")]
    assert b"device-2" in mesh.rust("kp-pat", "device", "list").stdout


def test_renewed_certificate_replaces_the_old_one(mesh):
    mesh.enroll("py", "renew-pat", "patient")
    mesh.enroll("rust", "renew-doc", "doctor")
    mf = meshfile(mesh)
    for user in ("renew-pat", "renew-doc"):
        pem = mesh.home(user) / "tls.pem"
        old, old_expiry = pem.read_bytes(), not_after(pem)
        key = (mesh.home(user) / "tls.key").read_bytes()
        time.sleep(1.1)  # a later not_after than the first certificate's
        printed = int(mesh.py(user, "renew").stdout.decode().strip())
        assert pem.read_bytes() != old
        assert (mesh.home(user) / "tls.key").read_bytes() == key  # the key stays
        assert printed == not_after(pem) and printed > old_expiry
        assert printed > time.time() + DAY
        # Both clients use the new certificate.
        assert b"pinned" in mesh.py(user, "whois", user).stderr
        assert b"pinned" in mesh.rust(user, "whois", user).stderr
    # The raw call: a CSR is all it takes, and the certificate names the caller.
    with Session(mf, mesh.home("renew-pat")) as pat:
        csr, _ = make_csr()
        resp = pat.renew(csr)
        cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == ["spiffe://sesphr.local/patient/renew-pat"]
        assert resp.not_after > time.time() + DAY


def _probes(doc: Session, meta, capsule: bytes, owner: str):
    """One call of the user `doc` to each service and to every node, each answering
    (code, details)."""
    def call(fn):
        try:
            fn()
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""

    reenc = srs_pb2.ReEncryptRequest(owner_id=meta.owner_id, partition=meta.partition,
                                     epoch=meta.epoch, capsules=[capsule],
                                     record_id=meta.record_id)
    probes = {
        "CloudStorage/ListRecords": lambda: call(lambda: doc.cloud.ListRecords(
            cs_pb.ListRecordsRequest(owner_id=owner), timeout=10)),
        "Srs/GetUser": lambda: call(lambda: doc.srs.GetUser(
            srs_pb2.GetUserRequest(user_id=owner), timeout=10)),
        "AccessPolicy/ListGrants": lambda: call(lambda: doc.policy.ListGrants(
            ap_pb.ListGrantsRequest(), timeout=10)),
    }
    for node in doc.nodes.nodes:
        probes[f"SrsNode {node.index}/ReEncrypt"] = (
            lambda node=node: call(lambda: node.stub.ReEncrypt(reenc, timeout=10)))
    return probes


def _wait_for(what: str, probes, accept, bound: float) -> float:
    """Polls every probe until each answer is accepted, at most `bound` seconds; the seconds
    it took."""
    start = time.monotonic()
    while True:
        answers = {name: probe() for name, probe in probes.items()}
        if all(accept(*a) for a in answers.values()):
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            pytest.fail(f"{what} not within {bound} s: "
                        + "; ".join(f"{n}: {c.name} {d}" for n, (c, d) in answers.items()
                                    if not accept(c, d)))
        time.sleep(0.25)


def test_disabled_user_is_refused_everywhere_and_works_after_enable(mesh):
    mesh.enroll("py", "dis-pat", "patient")
    mesh.enroll("py", "dis-doc", "doctor")
    mf = meshfile(mesh)
    with Patient(mf, mesh.home("dis-pat")) as pat:
        rid = pat.upload_bytes("medical", b"x-ray").record_id
        pat.grant("medical", "dis-doc")
        # A patient may not disable anyone.
        with pytest.raises(grpc.RpcError) as err:
            pat.policy.DisableUser(ap_pb.SetUserStatusRequest(user_id="dis-doc"), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    op = ["admin", "--cert", str(mesh.pki / "operator.pem"), "--key",
          str(mesh.pki / "operator.key")]
    with Session(mf, mesh.home("dis-doc")) as doc:
        assert doc.get(rid) == b"x-ray"
        meta = next(iter(doc.cloud.GetRecord(cs_pb.GetRecordRequest(record_id=rid),
                                             timeout=10))).meta
        capsule = crypto.RecordHeader.from_bytes(meta.record_header).capsule.to_bytes()
        probes = _probes(doc, meta, capsule, "dis-pat")
        ok = lambda code, _details: code == grpc.StatusCode.OK  # noqa: E731
        assert {n: p() for n, p in probes.items()} == {n: (grpc.StatusCode.OK, "") for n in probes}

        proc = mesh.py("operator", *op, "disable", "--id", "dis-doc", "--reason", "left the clinic")
        assert b"dis-doc disabled" in proc.stderr, proc.stderr
        disabled = lambda code, details: (code == grpc.StatusCode.PERMISSION_DENIED  # noqa: E731
                                          and "user disabled" in details)
        _wait_for("every service refusing dis-doc", probes, disabled, DISABLE_BOUND)
        with pytest.raises(ClientError) as err:
            doc.get(rid)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "user disabled" in str(err.value)
        # A new connection is refused too, and the patient is not.
        with Session(mf, mesh.home("dis-doc")) as again:
            with pytest.raises(ClientError, match="user disabled"):
                again.lookup("dis-pat")
        with Session(mf, mesh.home("dis-pat")) as pat:
            assert [r.record_id for r in pat.list()] == [rid]
        # Disabling twice changes nothing.
        proc = mesh.py("operator", *op, "disable", "--id", "dis-doc")
        assert b"already was" in proc.stderr, proc.stderr

        mesh.py("operator", *op, "enable", "--id", "dis-doc", "--reason", "back")
        _wait_for("every service serving dis-doc again", probes, ok, DISABLE_BOUND)
        assert doc.get(rid) == b"x-ray"
    assert mesh.py("dis-doc", "get", rid).stdout == b"x-ray"


def test_operator_commands_need_an_operator(mesh):
    """The admin commands with a patient's certificate: refused by the servers."""
    mesh.enroll("py", "not-op", "patient")
    home = mesh.home("not-op")
    args = ["admin", "--cert", str(home / "tls.pem"), "--key", str(home / "tls.key")]
    proc = mesh.py("not-op", *args, "disable", "--id", "not-op", ok=False)
    assert proc.returncode == 1 and b"permission denied" in proc.stderr, proc.stderr
    proc = mesh.py("not-op", *args, "enable", "--id", "not-op", ok=False)
    assert proc.returncode == 1 and b"permission denied" in proc.stderr, proc.stderr


def _issue(pki, ca: str, spiffe: str) -> tuple[bytes, bytes]:
    """A client certificate for `spiffe` signed by the dev PKI's CA `ca` ("ca": the service
    CA, "user-ca": the user CA): (key PEM, certificate PEM)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    ca_cert = x509.load_pem_x509_certificate((pki / f"{ca}.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / f"{ca}.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minted")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def test_each_identity_class_has_its_own_root(mesh):
    """A service identity from the user CA (what a taken-over setup service could mint) and a
    user identity from the service CA are refused (UNAUTHENTICATED); the same identities from
    the right CA work."""
    mesh.enroll("py", "roots-pat", "patient")
    mf = meshfile(mesh)
    ca = mf.ca.read_bytes()

    def deny_list(key, cert):
        with secure_channel(mf.access_policy, ca, key, cert) as ch:
            return ap_grpc.AccessPolicyStub(ch).GetDenyList(ap_pb.GetDenyListRequest(),
                                                            timeout=10)

    def own_records(key, cert):
        with secure_channel(mf.cloud_storage, ca, key, cert) as ch:
            return cs_grpc.CloudStorageStub(ch).ListRecords(cs_pb.ListRecordsRequest(),
                                                            timeout=10)

    cloud = "spiffe://sesphr.local/service/cloud-storage"
    patient = "spiffe://sesphr.local/patient/roots-pat"
    for call, spiffe, wrong in ((deny_list, cloud, "user-ca"), (own_records, patient, "ca")):
        with pytest.raises(grpc.RpcError) as err:
            call(*_issue(mesh.pki, wrong, spiffe))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (spiffe, err.value)
    deny_list(*_issue(mesh.pki, "ca", cloud))
    own_records(*_issue(mesh.pki, "user-ca", patient))

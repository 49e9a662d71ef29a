"""The audit transparency log of a real `sesphrd dev` mesh, checked by the Python client alone.

A patient's own audit entries must each be a leaf of the tree a checkpoint commits to
(inclusion proofs), the checkpoint must carry the log's signature and the mesh file's quorum
of witness cosignatures, and a later checkpoint, after more activity, must extend the earlier
one (a consistency proof). Every check here is tlog.py's, never the server's word; and each is
shown to fail on a changed entry, root or pin.
"""

from __future__ import annotations

import time
import tomllib

import grpc
import pytest

from conftest import write_mesh_toml
from sesphr_client import tlog
from sesphr_client.client import AuditHead, ClientError, MeshFile, Patient, Session

# Checkpoints come every second and witnesses poll every second; a debug build on a loaded
# machine gets ample slack, and a hang still ends.
DEADLINE_S = 90


def fresh_checkpoint(s: Session, covers: int, after: int = -1) -> tlog.SignedCheckpoint:
    """Polls Session.audit_checkpoint (which verifies the signatures, the quorum and the pin)
    until a checkpoint covers the first `covers` entries and is larger than `after`."""
    deadline = time.monotonic() + DEADLINE_S
    last = "no checkpoint with the quorum yet"
    while True:
        try:
            head = s.audit_checkpoint()
            if head.checkpoint.size >= covers and head.checkpoint.size > after:
                return head
            last = f"newest witnessed checkpoint has size {head.checkpoint.size}"
        except ClientError as e:
            # No checkpoint with the quorum yet; anything else (a bad signature, a fork) fails.
            if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            last = str(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"no witnessed checkpoint of size >= {covers} (> {after}) "
                                 f"within {DEADLINE_S}s: {last}")
        time.sleep(0.25)


def activity(mesh, tmp_path, owner: str, grantee: str, tag: str) -> None:
    """An upload, a grant, a read by the grantee (the Rust CLI) and a revocation: audit
    entries by the patient, AccessPolicy's checks and the nodes' re-encryptions."""
    src = tmp_path / f"{tag}.txt"
    src.write_bytes(f"record {tag}".encode())
    rid = mesh.py(owner, "upload", "--partition", "medical", str(src)).stdout.decode().strip()
    mesh.py(owner, "grant", "--partition", "medical", "--to", grantee)
    assert mesh.rust(grantee, "get", rid).stdout == f"record {tag}".encode()
    mesh.py(owner, "revoke", "--partition", "medical", "--from", grantee)


def test_audit_entries_are_in_witnessed_checkpoints_that_extend_each_other(mesh, tmp_path):
    mf = MeshFile.load(mesh.mesh_file)
    # The dev mesh's [audit]: every node and CloudStorage witnesses, a majority must cosign.
    assert mf.audit is not None, "sesphrd dev wrote no [audit] section into mesh.toml"
    names = [n for n, _ in mf.audit.witnesses]
    assert sorted(names) == sorted([f"srs-node-{n.index}" for n in mf.srs_nodes]
                                   + ["cloud-storage"])
    assert mf.audit.witness_quorum == len(names) // 2 + 1
    assert mf.audit.origin == f"{mf.trust_domain}/audit"
    # The keys are the ones sesphrd dev wrote into DIR/pki.
    assert mf.audit.log_key == tlog.PublicKey.from_hex((mesh.pki / "audit" / "log.pub").read_text())
    for name, key in mf.audit.witnesses:
        assert key == tlog.PublicKey.from_hex((mesh.pki / "witness" / f"{name}.pub").read_text())

    mesh.enroll("py", "tlog-erin", "patient")
    mesh.enroll("rust", "tlog-frank", "doctor")
    activity(mesh, tmp_path, "tlog-erin", "tlog-frank", "one")

    with Patient(mf, mesh.home("tlog-erin")) as erin:
        first = erin.audit_entries()
        assert first, "a patient who uploaded, granted and revoked has audit entries"
        assert all(e.leaf_index == e.seq - 1 and len(e.salt) == tlog.SALT_LEN for e in first)
        assert {"grant", "revoke"} <= {e.action for e in first}
        head1 = fresh_checkpoint(erin, covers=first[-1].seq)
        cp1 = head1.checkpoint
        # Checked again here, step by step: log signature, then the quorum of the mesh
        # file's witnesses (cosignatures by anyone else do not count).
        tlog.verify_checkpoint(mf.audit.log_key, cp1, head1.signature)
        cosigners = tlog.verify_witnessed(mf.audit.log_key, head1, mf.audit.witness_keys(),
                                          mf.audit.witness_quorum)
        assert len(set(cosigners)) >= mf.audit.witness_quorum
        for c in head1.cosignatures:
            if c.witness in cosigners:
                tlog.verify_cosignature(mf.audit.witness_keys()[c.witness], cp1, c)
        # Every one of erin's entries is a leaf of that tree, as listed.
        erin.prove_entries(first, head1)
        # ...and a changed entry is not: the check can fail.
        changed = type(first[0])()
        changed.CopyFrom(first[0])
        changed.detail += "x"
        with pytest.raises(ClientError, match="not in the log as listed"):
            erin.prove_entries([changed], head1)
        with pytest.raises(ClientError, match="not in the checkpoint of size"):
            beyond = type(first[0])()
            beyond.CopyFrom(first[0])
            beyond.seq, beyond.leaf_index = cp1.size + 1, cp1.size
            erin.prove_entries([beyond], head1)
        # The pin is that checkpoint (or a later one: witnesses are quick).
        pinned = AuditHead(mesh.home("tlog-erin")).load()
        assert pinned is not None and pinned.checkpoint.size >= cp1.size

    # More activity, then a later checkpoint that must extend the first.
    activity(mesh, tmp_path, "tlog-erin", "tlog-frank", "two")
    with Patient(mf, mesh.home("tlog-erin")) as erin:
        everything = erin.audit_entries()
        later = [e for e in everything if e.seq > first[-1].seq]
        assert later, "the second round wrote entries about erin"
        assert [e.seq for e in everything[:len(first)]] == [e.seq for e in first]
        head2 = fresh_checkpoint(erin, covers=everything[-1].seq, after=cp1.size)
        cp2 = head2.checkpoint
        assert cp2.size > cp1.size
        proof = erin.consistency_proof(cp1.size, cp2.size)
        tlog.verify_consistency(cp1.size, cp2.size, cp1.root, cp2.root, proof)
        with pytest.raises(tlog.ProofError):
            tlog.verify_consistency(cp1.size, cp2.size, cp2.root, cp1.root, proof)
        with pytest.raises(tlog.ProofError):
            tlog.verify_consistency(cp1.size, cp2.size, cp1.root, cp2.root, proof[:-1])
        # Old and new entries alike are in the later tree.
        erin.prove_entries(everything, head2)
        assert AuditHead(mesh.home("tlog-erin")).load().checkpoint.size >= cp2.size

        # A pin of a different tree at size cp1.size (a log rewritten since): refused.
        head = AuditHead(mesh.home("tlog-erin"))
        good = head.load()
        forged = tlog.Checkpoint(cp1.origin, cp1.size, bytes(32), cp1.time)
        head.save(tlog.SignedCheckpoint(forged, head1.signature, head1.cosignatures))
        with pytest.raises(ClientError, match="not the one seen before"):
            erin.audit_checkpoint()
        # A pin larger than anything the log ever had (the log shrank): refused too.
        head.save(tlog.SignedCheckpoint(tlog.Checkpoint(cp1.origin, cp2.size + 10**6,
                                                        cp2.root, cp2.time),
                                        head2.signature, ()))
        with pytest.raises(ClientError, match="shrank"):
            erin.audit_checkpoint()
        head.save(good)
        assert erin.audit_checkpoint().checkpoint.size >= good.checkpoint.size

    # The command line does the same checks, and lists what the Rust CLI lists.
    out = mesh.py("tlog-erin", "audit", "--verify")
    assert b"audit log verifies: " in out.stderr, out.stderr
    py_lines = out.stdout.decode().splitlines()
    assert len(py_lines) >= len(everything)
    # The Rust CLI reads (and advances) the pin the Python client wrote, and the other way
    # round: one audit-head.toml for both.
    rust_lines = mesh.rust("tlog-erin", "audit").stdout.decode().splitlines()
    assert rust_lines[:len(py_lines)] == py_lines
    rust_pin = tomllib.loads((mesh.home("tlog-erin") / "audit-head.toml").read_text())
    assert rust_pin["size"] >= cp2.size
    assert AuditHead(mesh.home("tlog-erin")).load().checkpoint.size == rust_pin["size"]
    assert b"audit log verifies: " in mesh.py("tlog-erin", "audit", "--verify").stderr
    assert AuditHead(mesh.home("tlog-erin")).load().checkpoint.size >= rust_pin["size"]


def test_a_mesh_file_with_wrong_audit_keys_is_refused(mesh, tmp_path):
    """A client whose mesh file names another log key, or witnesses whose cosignatures it
    cannot find, accepts no checkpoint from this mesh."""
    mesh.enroll("py", "tlog-gail", "patient")
    data = mesh.toml()
    other = tlog.SigningKey(12345).public_key().hex()

    def variant(name: str, **audit) -> MeshFile:
        d = {**data, "audit": {**data["audit"], **audit}}
        path = tmp_path / f"{name}.toml"
        path.write_text(write_mesh_toml(d))
        return MeshFile.load(path)

    with Session(MeshFile.load(mesh.mesh_file), mesh.home("tlog-gail")) as s:
        fresh_checkpoint(s, covers=1)
    (mesh.home("tlog-gail") / "audit-head.toml").unlink()
    with Session(variant("other-log-key", log_key=other), mesh.home("tlog-gail")) as s:
        with pytest.raises(ClientError, match="log signature"):
            s.audit_checkpoint()
    # The same witness names with other keys: none of their cosignatures count.
    strangers = [{"name": w["name"], "key": tlog.SigningKey(1000 + i).public_key().hex()}
                 for i, w in enumerate(data["audit"]["witnesses"])]
    with Session(variant("other-witnesses", witnesses=strangers), mesh.home("tlog-gail")) as s:
        with pytest.raises(ClientError, match="quorum"):
            s.audit_checkpoint()
    assert not (mesh.home("tlog-gail") / "audit-head.toml").exists()

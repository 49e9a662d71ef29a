"""The SRS as a setup service and n re-encryption nodes, against real `sesphrd dev` meshes.

A grant is a t-of-n sharing of node-bound kfrags (docs/crypto.md §7.4), share i
at node i only; a read combines the first t cfrags that verify; a node away
costs nothing as long as t others answer, and what it missed is owed to it in
the profile's pending-nodes.toml (either client replays it). The Python client
talks to a node only if it presents `service/srs-node/<i>`.
"""

from __future__ import annotations

import os
import re
import tomllib
from concurrent import futures

import grpc
import pytest

from conftest import dead_url, write_mesh_toml
from sesphr_client import crypto
from sesphr_client.client import (ClientError, MeshFile, Patient, Session, cs_pb,
                                  secure_channel, srs_pb2, srs_pb2_grpc)

SPIFFE = "spiffe://sesphr.local"


def pending_ops(mesh, user: str) -> list[dict]:
    path = mesh.home(user) / "pending-nodes.toml"
    return tomllib.loads(path.read_text()).get("ops", []) if path.exists() else []


def test_mesh_file_lists_the_nodes(mesh):
    mf = MeshFile.load(mesh.mesh_file)
    assert mf.threshold == 2
    assert [n.index for n in mf.srs_nodes] == [1, 2, 3]
    assert all(n.url.startswith("https://127.0.0.1:") for n in mf.srs_nodes)
    assert len({n.url for n in mf.srs_nodes} | {mf.srs, mf.cloud_storage, mf.access_policy}) == 6
    assert mf.node_identity(2) == f"{SPIFFE}/service/srs-node/2"


def _bad_mesh_files(data: dict):
    def nodes(f):
        d = {**data, "srs_nodes": [dict(n) for n in data["srs_nodes"]]}
        f(d)
        return d
    yield "threshold 0", {**data, "threshold": 0}, "threshold 0 must be 1 to"
    yield "threshold above n", {**data, "threshold": 4}, "threshold 4 must be 1 to"
    yield "no threshold", {k: v for k, v in data.items() if k != "threshold"}, "threshold"
    yield "no nodes", {k: v for k, v in data.items() if k != "srs_nodes"}, "lists no [[srs_nodes]]"
    yield "index gap", nodes(lambda d: d["srs_nodes"][2].update(index=4)), "numbered 1 to 3"
    yield "index twice", nodes(lambda d: d["srs_nodes"][2].update(index=2)), "listed twice"
    yield "index 0", nodes(lambda d: d["srs_nodes"][0].update(index=0)), "node index 0"
    yield "plain http", nodes(lambda d: d["srs_nodes"][1].update(
        url=d["srs_nodes"][1]["url"].replace("https", "http"))), "must start with https://"
    yield "short share", nodes(lambda d: d["srs_nodes"][0].update(oprf_public_share="02ab")), \
        "not 66 hex digits"
    # Nodes 1 and 2's OPRF shares swapped: still points, but no longer one dealing.
    yield "other dealing", nodes(lambda d: (
        d["srs_nodes"][0].update(oprf_public_share=data["srs_nodes"][1]["oprf_public_share"]),
        d["srs_nodes"][1].update(oprf_public_share=data["srs_nodes"][0]["oprf_public_share"]))), \
        "not one 2-of-3 dealing"
    yield "unknown key", nodes(lambda d: d["srs_nodes"][0].update(weight=1)), "unknown keys"
    yield "zero timeout", {**data, "timeouts": {"unary_ms": 0}}, "timeouts.unary_ms must be > 0"
    yield "unknown timeout", {**data, "timeouts": {"read_ms": 5}}, "[timeouts] takes only"


def test_mesh_file_nodes_are_checked_like_the_rust_client_does(mesh, tmp_path):
    mesh.enroll("rust", "checker", "doctor")
    for name, data, why in _bad_mesh_files(mesh.toml()):
        path = tmp_path / f"{name.replace(' ', '-')}.toml"
        path.write_text(write_mesh_toml(data))
        with pytest.raises(ClientError, match=re.escape(why)):
            MeshFile.load(path)
        assert mesh.py("checker", "whois", "checker", ok=False, mesh_file=path).returncode == 1
        proc = mesh.rust("checker", "whois", "checker", ok=False, mesh_file=path)
        assert proc.returncode != 0, f"the Rust CLI accepts a mesh file with {name}"
    # `[timeouts]` (milliseconds) is read as the Rust client reads it.
    path = tmp_path / "timeouts.toml"
    path.write_text(write_mesh_toml({**mesh.toml(), "timeouts": {"connect_ms": 2000,
                                                                  "unary_ms": 5000}}))
    assert MeshFile.load(path).timeouts.unary == 5.0
    assert MeshFile.load(path).timeouts.connect == 2.0
    mesh.py("checker", "whois", "checker", mesh_file=path)
    mesh.rust("checker", "whois", "checker", mesh_file=path)


def test_python_grant_read_by_python_two_of_three(mesh, tmp_path):
    mesh.enroll("py", "nina", "patient")
    mesh.enroll("py", "omar", "doctor")
    data = os.urandom(3000)
    src = tmp_path / "labs.bin"
    src.write_bytes(data)
    rid = mesh.py("nina", "upload", "--partition", "medical", str(src)).stdout.decode().strip()
    proc = mesh.py("nina", "grant", "--partition", "medical", "--to", "omar")
    assert b"note:" not in proc.stderr  # every node took its share
    assert pending_ops(mesh, "nina") == []
    assert mesh.py("omar", "get", rid).stdout == data

    # Node i holds share i, and only it: its cfrag carries node i's id for this grant.
    meshfile = MeshFile.load(mesh.mesh_file)
    context = crypto.grant_context("nina", "medical", 0, "omar")
    with Session(meshfile, mesh.home("omar")) as omar:
        header = crypto.RecordHeader.from_bytes(
            next(iter(omar.cloud.GetRecord(cs_pb.GetRecordRequest(record_id=rid),
                                           timeout=30))).meta.record_header)
        for node in omar.nodes.nodes:
            resp = node.stub.ReEncrypt(srs_pb2.ReEncryptRequest(
                owner_id="nina", partition="medical", epoch=0,
                capsules=[header.capsule.to_bytes()] * 3, record_id=rid), timeout=30)
            # One cfrag per capsule asked, all from this node's one share.
            assert len(resp.cfrags) == 3
            ids = {crypto.CapsuleFrag.from_bytes(c).kfrag_id for c in resp.cfrags}
            assert ids == {crypto.node_kfrag_id(context, node.index)}

    # Any two nodes suffice; with two away the read fails and names them.
    urls = mesh.node_urls()
    for away in (1, 2, 3):
        m = mesh.variant(tmp_path / f"without-{away}.toml", {away: dead_url()})
        assert mesh.py("omar", "get", rid, mesh_file=m).stdout == data
    m = mesh.variant(tmp_path / "only-1.toml", {2: dead_url(), 3: dead_url()})
    proc = mesh.py("omar", "get", rid, ok=False, mesh_file=m)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "1 of the 2 re-encryption nodes a read needs gave a valid cfrag (3 in the mesh)" in err
    assert "node 2 (https://127.0.0.1:" in err and "node 3 (https://127.0.0.1:" in err
    assert f"node 1 ({urls[1]})" not in err

    # A rotation re-issues shares at every node: a record of the new epoch opens with
    # any two of them.
    assert mesh.py("nina", "rotate", "--partition", "medical").stdout.strip() == b"1"
    with Patient(meshfile, mesh.home("nina")) as nina:
        rid1 = nina.upload_bytes("medical", b"epoch one").record_id
    for away in (1, 2, 3):
        m = mesh.variant(tmp_path / f"without-{away}.toml", {away: dead_url()})
        assert mesh.py("omar", "get", rid1, mesh_file=m).stdout == b"epoch one"


def test_python_grant_with_a_node_away_read_by_rust(mesh, tmp_path):
    mesh.enroll("py", "pia", "patient")
    mesh.enroll("rust", "quinn", "nurse")
    src = tmp_path / "note.txt"
    src.write_bytes(b"for quinn")
    rid = mesh.py("pia", "upload", "--partition", "medical", str(src)).stdout.decode().strip()
    without3 = mesh.variant(tmp_path / "without-3.toml", {3: dead_url()})
    proc = mesh.py("pia", "grant", "--partition", "medical", "--to", "quinn", mesh_file=without3)
    assert b"note: node 3 (https://127.0.0.1:" in proc.stderr
    assert b"did not take its kfrag share for quinn (medical, epoch 0)" in proc.stderr
    ops = pending_ops(mesh, "pia")
    assert [(o["node"], o["kind"], o["grantee_id"], o["epoch"]) for o in ops] == [
        (3, "put", "quinn", 0)]
    assert (mesh.home("pia") / "pending-nodes.toml").stat().st_mode & 0o777 == 0o600

    # Nodes 1 and 2 have their shares, so the Rust CLI reads; without node 1 it cannot,
    # since node 3 has none yet.
    assert mesh.rust("quinn", "get", rid).stdout == b"for quinn"
    without1 = mesh.variant(tmp_path / "without-1.toml", {1: dead_url()})
    assert mesh.rust("quinn", "get", rid, ok=False, mesh_file=without1).returncode != 0
    # The owed share reaches node 3 (`retry`, or before the next grant): now nodes 2 and 3
    # suffice too.
    assert mesh.py("pia", "retry").stdout.strip() == b"0"
    assert pending_ops(mesh, "pia") == []
    assert mesh.rust("quinn", "get", rid, mesh_file=without1).stdout == b"for quinn"
    assert mesh.py("quinn", "get", rid, mesh_file=without1).stdout == b"for quinn"


def test_rust_grant_with_a_node_away_read_by_python(mesh, tmp_path):
    mesh.enroll("rust", "rosa", "patient")
    mesh.enroll("py", "sam", "pharmacist")
    src = tmp_path / "rx.txt"
    src.write_bytes(b"for sam")
    rid = mesh.rust("rosa", "upload", "--partition", "medication", str(src)).stdout.decode().strip()
    without2 = mesh.variant(tmp_path / "without-2.toml", {2: dead_url()})
    mesh.rust("rosa", "grant", "--partition", "medication", "--to", "sam", mesh_file=without2)
    # The Rust client owes node 2 its share, in the same file the Python client keeps.
    assert [(o["node"], o["kind"]) for o in pending_ops(mesh, "rosa")] == [(2, "put")]
    assert mesh.py("sam", "get", rid).stdout == b"for sam"
    without1 = mesh.variant(tmp_path / "without-1.toml", {1: dead_url()})
    proc = mesh.py("sam", "get", rid, ok=False, mesh_file=without1)
    assert proc.returncode == 1 and b"node 2" in proc.stderr, proc.stderr
    # The Python client replays what the Rust client owed (the profile is shared).
    assert mesh.py("rosa", "retry").stdout.strip() == b"0"
    assert pending_ops(mesh, "rosa") == []
    assert mesh.py("sam", "get", rid, mesh_file=without1).stdout == b"for sam"


def test_revoke_with_a_node_away(mesh, tmp_path):
    mesh.enroll("py", "tara", "patient")
    mesh.enroll("py", "uma", "friend")
    meshfile = MeshFile.load(mesh.mesh_file)
    with Patient(meshfile, mesh.home("tara")) as tara:
        rid = tara.upload_bytes("personal", b"for uma").record_id
    mesh.py("tara", "grant", "--partition", "personal", "--to", "uma")
    assert mesh.py("uma", "get", rid).stdout == b"for uma"
    without2 = mesh.variant(tmp_path / "without-2.toml", {2: dead_url()})
    with Patient(MeshFile.load(without2), mesh.home("tara")) as tara:
        tara.revoke("personal", "uma")
        assert tara.unreached == [2]
        notices = tara.take_notices()
    assert len(notices) == 1 and notices[0].startswith("node 2 (https://127.0.0.1:")
    assert "did not confirm deleting uma's kfrag shares (personal)" in notices[0]
    assert [(o["node"], o["kind"]) for o in pending_ops(mesh, "tara")] == [(2, "delete")]
    # AccessPolicy refuses uma at once, whatever node 2 still holds.
    proc = mesh.py("uma", "get", rid, ok=False)
    assert proc.returncode == 1 and b"permission denied" in proc.stderr
    # The next rotation first delivers the owed deletion.
    mesh.py("tara", "rotate", "--partition", "personal")
    assert pending_ops(mesh, "tara") == []


def test_grant_needs_threshold_nodes(mesh, tmp_path):
    mesh.enroll("py", "vera", "patient")
    mesh.enroll("py", "walt", "doctor")
    only1 = mesh.variant(tmp_path / "only-1.toml", {2: dead_url(), 3: dead_url()})
    proc = mesh.py("vera", "grant", "--partition", "medical", "--to", "walt", ok=False,
                   mesh_file=only1)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert ("only 1 of the 3 re-encryption nodes took their kfrag share; a grant needs 2. "
            "Not reached: node 2 (https://127.0.0.1:") in err, err
    assert "; node 3 (https://127.0.0.1:" in err
    # Nothing was granted: neither AccessPolicy nor the ledger has it.
    assert "walt" not in mesh.py("vera", "grants").stdout.decode()
    assert tomllib.loads((mesh.home("vera") / "grants.toml").read_text()) == {}


def test_share_for_one_node_is_refused_by_another(mesh):
    mesh.enroll("py", "xena", "patient")
    mesh.enroll("py", "yuri", "doctor")
    with Patient(MeshFile.load(mesh.mesh_file), mesh.home("xena")) as xena:
        yuri, _ = xena.user_keys("yuri")
        keys = xena.master.partition_keys("medical", 0)
        context = crypto.grant_context("xena", "medical", 0, "yuri")
        kfrags = crypto.generate_node_kfrags(
            keys.secret, crypto.decode_point(yuri.pre_public_key), xena.master.signing_key(),
            2, 3, context)

        def put(node: int, kfrag: crypto.KeyFrag, epoch: int = 0):
            return xena.nodes.node(node).stub.PutKfrag(srs_pb2.PutKfragRequest(
                partition="medical", epoch=epoch, grantee_id="yuri",
                delegating_public_key=keys.public_bytes(), kfrag=kfrag.to_bytes()), timeout=30)

        with pytest.raises(grpc.RpcError) as rpc:
            put(2, kfrags[0])  # node 1's share, sent to node 2
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not node 2's share of this grant" in rpc.value.details()
        # The share bound to another grant (epoch) is refused too, even by its own node.
        with pytest.raises(grpc.RpcError) as rpc:
            put(1, kfrags[0], epoch=1)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Each node takes its own share.
        for i, kfrag in enumerate(kfrags, start=1):
            put(i, kfrag)


def test_node_refusals_over_raw_grpc(mesh):
    """A practitioner cannot file kfrags at a node; the setup service files none."""
    mesh.enroll("py", "zack", "doctor")
    meshfile = MeshFile.load(mesh.mesh_file)
    ca, key, cert = (mesh.home("zack") / n for n in ("ca.pem", "tls.key", "tls.pem"))
    kfrag = bytes(crypto.KFRAG_LEN)
    with secure_channel(meshfile.srs_nodes[0].url, ca.read_bytes(), key.read_bytes(),
                        cert.read_bytes()) as ch:
        with pytest.raises(grpc.RpcError) as rpc:
            srs_pb2_grpc.SrsNodeStub(ch).PutKfrag(srs_pb2.PutKfragRequest(
                partition="medical", epoch=0, grantee_id="nina", kfrag=kfrag), timeout=30)
        assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with secure_channel(meshfile.srs, ca.read_bytes(), key.read_bytes(), cert.read_bytes()) as ch:
        for method in ("PutKfrags", "ReEncrypt", "DeleteKfrags"):
            with pytest.raises(grpc.RpcError) as rpc:
                ch.unary_unary(f"/sesphr.v1.Srs/{method}")(b"", timeout=30)
            assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED, method


def test_servers_presenting_another_identity_are_not_used(mesh, tmp_path):
    """The relay checks every server's SPIFFE id: a node at another node's address, or one
    service at another's, is not talked to (by either client)."""
    mesh.enroll("py", "abby", "patient")
    mesh.enroll("py", "ben", "doctor")
    meshfile = MeshFile.load(mesh.mesh_file)
    with Patient(meshfile, mesh.home("abby")) as abby:
        rid = abby.upload_bytes("medical", b"for ben").record_id
        abby.grant("medical", "ben")
    urls = mesh.node_urls()
    swapped = mesh.variant(tmp_path / "swapped.toml", {1: urls[2], 2: urls[1]})
    proc = mesh.py("ben", "get", rid, ok=False, mesh_file=swapped)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert (f"the server at {urls[2]} presents {SPIFFE}/service/srs-node/2, not "
            f"{SPIFFE}/service/srs-node/1") in err, err
    assert f"presents {SPIFFE}/service/srs-node/1, not {SPIFFE}/service/srs-node/2" in err
    assert mesh.rust("ben", "get", rid, ok=False, mesh_file=swapped).returncode != 0
    moved = mesh.variant(tmp_path / "moved.toml", cloud_storage=meshfile.access_policy)
    proc = mesh.py("ben", "get", rid, ok=False, mesh_file=moved)
    assert proc.returncode == 1
    assert (f"presents {SPIFFE}/service/access-policy, not {SPIFFE}/service/cloud-storage"
            in proc.stderr.decode()), proc.stderr
    assert mesh.rust("ben", "get", rid, ok=False, mesh_file=moved).returncode != 0
    assert mesh.py("ben", "get", rid).stdout == b"for ben"


class ForgingNode(srs_pb2_grpc.SrsNodeServicer):
    """A node with a genuine node identity whose cfrags, under the owner's genuine
    delegating key, come from a kfrag the owner never signed."""

    def __init__(self, delegating: bytes):
        self.delegating = delegating

    def ReEncrypt(self, request, context):  # noqa: N802 - the gRPC method name
        capsule = crypto.Capsule.from_bytes(request.capsules[0])
        kfrag = crypto.generate_kfrags(crypto.KeyPair.random().secret,
                                       crypto.KeyPair.random().public,
                                       crypto.MasterSecret.generate().signing_key(), 1, 1)[0]
        return srs_pb2.ReEncryptResponse(cfrags=[crypto.reencrypt(capsule, kfrag).to_bytes()],
                                         delegating_public_key=self.delegating)


def test_a_node_with_invalid_cfrags_is_skipped_and_reported(mesh, tmp_path):
    mesh.enroll("py", "cleo", "patient")
    mesh.enroll("py", "dan", "doctor")
    meshfile = MeshFile.load(mesh.mesh_file)
    with Patient(meshfile, mesh.home("cleo")) as cleo:
        rid = cleo.upload_bytes("medical", b"for dan").record_id
        cleo.grant("medical", "dan")
        delegating = cleo.master.partition_keys("medical", 0).public_bytes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    srs_pb2_grpc.add_SrsNodeServicer_to_server(ForgingNode(delegating), server)
    creds = grpc.ssl_server_credentials([((mesh.pki / "srs-node-3.key").read_bytes(),
                                          (mesh.pki / "srs-node-3.pem").read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        forged = f"https://127.0.0.1:{port}"
        # Nodes 1 and 2 suffice, whatever node 3 says.
        m = mesh.variant(tmp_path / "forging-3.toml", {3: forged})
        assert mesh.py("dan", "get", rid, mesh_file=m).stdout == b"for dan"
        # With node 2 away, node 3's cfrag is checked, skipped and reported, and the read
        # fails naming both.
        m = mesh.variant(tmp_path / "forging-3-without-2.toml", {2: dead_url(), 3: forged})
        proc = mesh.py("dan", "get", rid, ok=False, mesh_file=m)
        err = proc.stderr.decode()
        assert proc.returncode == 1
        assert (f"note: node 3 ({forged}) returned a cfrag that does not verify against the "
                "owner's kfrags; it was skipped") in err, err
        assert "1 of the 2 re-encryption nodes a read needs gave a valid cfrag" in err
        assert "node 2 (https://127.0.0.1:" in err and "node 3: cfrag that does not verify" in err
        assert mesh.rust("dan", "get", rid, ok=False, mesh_file=m).returncode != 0
    finally:
        server.stop(None)


def test_one_node_mesh(mesh1, tmp_path):
    mf = MeshFile.load(mesh1.mesh_file)
    assert mf.threshold == 1 and [n.index for n in mf.srs_nodes] == [1]
    mesh1.enroll("py", "eve", "patient")
    mesh1.enroll("rust", "finn", "doctor")
    mesh1.enroll("rust", "gail", "patient")
    mesh1.enroll("py", "hugo", "nurse")
    src = tmp_path / "one.txt"
    src.write_bytes(b"one node")
    rid = mesh1.py("eve", "upload", "--partition", "medical", str(src)).stdout.decode().strip()
    mesh1.py("eve", "grant", "--partition", "medical", "--to", "finn")
    mesh1.py("eve", "grant", "--partition", "medical", "--to", "hugo")
    assert mesh1.rust("finn", "get", rid).stdout == b"one node"
    assert mesh1.py("hugo", "get", rid).stdout == b"one node"
    rid2 = mesh1.rust("gail", "upload", "--partition", "medical", str(src)).stdout.decode().strip()
    mesh1.rust("gail", "grant", "--partition", "medical", "--to", "hugo")
    assert mesh1.py("hugo", "get", rid2).stdout == b"one node"
    # With its only node away, a 1-of-1 mesh cannot grant or read.
    away = mesh1.variant(tmp_path / "away.toml", {1: dead_url()})
    proc = mesh1.py("hugo", "get", rid, ok=False, mesh_file=away)
    assert proc.returncode == 1 and b"0 of the 1 re-encryption nodes" in proc.stderr
    proc = mesh1.py("eve", "grant", "--partition", "medical", "--to", "finn", ok=False,
                    mesh_file=away)
    assert proc.returncode == 1 and b"only 0 of the 1 re-encryption nodes" in proc.stderr

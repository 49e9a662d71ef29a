#!/usr/bin/env python3
"""Records tests/vectors/tlog-mesh.json: audit log checkpoints signed and cosigned by a real
`sesphrd dev` mesh (the Rust log and witnesses), a consistency proof between two of them and
inclusion proofs of a patient's entries, with the public keys from its mesh.toml.

    target/py-venv/bin/python clients/python/record_tlog_vectors.py [OUT.json]

It starts `sesphrd dev` from $SESPHR_BIN_DIR (default target/debug) in a temporary
directory, enrolls a patient, makes some activity, waits until every witness cosigned, and
stops the mesh. tests/test_tlog.py then checks the Python verifier accepts exactly these.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))

from conftest import _start_mesh  # noqa: E402
from sesphr_client import tlog  # noqa: E402
from sesphr_client.client import ClientError, MeshFile, Patient, ap_pb  # noqa: E402

DEADLINE_S = 120


def all_cosigned(p: Patient, n: int, after: int) -> dict:
    """The newest checkpoint larger than `after` that every one of the n witnesses cosigned."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            resp = p.policy.GetCheckpoint(ap_pb.GetCheckpointRequest(min_cosignatures=n),
                                          timeout=10)
            signed = p._signed_checkpoint(resp)
            if signed.checkpoint.size > after and len(signed.cosignatures) >= n:
                return {"body": resp.checkpoint, "signature": bytes(resp.signature).hex(),
                        "cosignatures": [{"witness": c.witness, "time": c.time,
                                          "signature": bytes(c.signature).hex()}
                                         for c in resp.cosignatures]}
        except Exception as e:  # noqa: BLE001 - retried until the deadline, then reported
            last = e
        else:
            last = f"size {signed.checkpoint.size}"
        if time.monotonic() > deadline:
            raise SystemExit(f"no checkpoint cosigned by all {n} witnesses: {last}")
        time.sleep(0.5)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "tests" / "vectors" / "tlog-mesh.json"
    with tempfile.TemporaryDirectory() as tmp:
        gen = _start_mesh(Path(tmp))
        mesh = next(gen)
        try:
            mesh.enroll("py", "vera", "patient")
            mesh.enroll("rust", "walt", "doctor")
            mf = MeshFile.load(mesh.mesh_file)
            if mf.audit is None:
                raise SystemExit("the mesh file has no [audit] section")
            n = len(mf.audit.witnesses)
            with Patient(mf, mesh.home("vera")) as vera:
                # Trees of sizes that are no powers of two, so the proofs have both kinds
                # of step.
                for i in range(5):
                    vera.upload_bytes("medical", b"first round %d" % i)
                vera.grant("medical", "walt")
                first = all_cosigned(vera, n, 0)
                for i in range(6):
                    vera.upload_bytes("personal", b"second round %d" % i)
                vera.revoke("medical", "walt")
                entries = vera.audit_entries()
                if not entries:
                    raise SystemExit("the patient has no audit entries to prove")
                second = all_cosigned(vera, n, max(tlog.Checkpoint.parse(first["body"]).size,
                                                   entries[-1].seq - 1))
                c1, c2 = (tlog.Checkpoint.parse(x["body"]) for x in (first, second))
                consistency = vera.consistency_proof(c1.size, c2.size)
                chosen = [e for e in entries if e.seq <= c2.size][:8]
                resp = vera.policy.GetInclusionProofs(ap_pb.GetInclusionProofsRequest(
                    tree_size=c2.size, leaf_indexes=[e.seq - 1 for e in chosen]), timeout=10)
                proofs = {p.leaf_index: [bytes(x).hex() for x in p.hashes] for p in resp.proofs}
        finally:
            gen.close()
    fields = ("seq", "time", *tlog.ENTRY_FIELDS, "leaf_index")
    doc = {
        "comment": "Recorded from a sesphrd dev mesh by clients/python/record_tlog_vectors.py",
        "origin": mf.audit.origin,
        "log_key": mf.audit.log_key.hex(),
        "witnesses": [{"name": name, "key": key.hex()} for name, key in mf.audit.witnesses],
        "checkpoints": [first, second],
        "consistency": [x.hex() for x in consistency],
        "inclusion": [{"entry": {**{f: getattr(e, f) for f in fields}, "salt": bytes(e.salt).hex()},
                       "hashes": proofs[e.seq - 1]} for e in chosen],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}: sizes {c1.size} and {c2.size}, {len(chosen)} inclusion proofs")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClientError as e:
        sys.exit(f"record_tlog_vectors: {e}")

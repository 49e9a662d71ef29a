#!/usr/bin/env python3
"""Regenerates the gRPC stubs of proto/sesphr/v1/*.proto into gen/ (git-ignored).

Run with the client's virtualenv (it needs grpcio-tools):
    python clients/python/gen_stubs.py
The stubs are always generated from the repository's proto/ directory, so
they cannot drift from the contract.
"""

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parents[1] / "proto"
OUT = HERE / "gen"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "sesphr" / "v1").glob("*.proto"))
    if not protos:
        print(f"no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    # grpc_tools ships the well-known types' .proto files.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
                      f"--python_out={OUT}", f"--pyi_out={OUT}", f"--grpc_python_out={OUT}", *protos])
    if rc != 0:
        print("protoc failed", file=sys.stderr)
        return rc
    for d in (OUT / "sesphr", OUT / "sesphr" / "v1"):
        (d / "__init__.py").touch()
    print(f"generated stubs for {len(protos)} protos in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real `sesphrd dev` mesh on loopback for the interoperability tests.

The binaries come from $SESPHR_BIN_DIR (run-tests.sh sets it) or
target/debug. Each mesh runs in a temporary directory with `--base-port 0`
and is always stopped at the end of the session: `mesh` (3 re-encryption
nodes, threshold 2, as `sesphrd dev` defaults) and, for the tests that ask
for it, `mesh1` (one node, threshold 1).
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from sesphr_client.client import Invitation, MeshFile, Operator

CLIENT_DIR = Path(__file__).resolve().parents[1]
REPO = CLIENT_DIR.parents[1]
START_TIMEOUT = 90  # seconds for sesphrd dev to print its mesh file
CLI_TIMEOUT = 120  # seconds for one CLI invocation


def bin_dir() -> Path:
    env = os.environ.get("SESPHR_BIN_DIR")
    return Path(env) if env else REPO / "target" / "debug"


@dataclass
class Mesh:
    dir: Path
    mesh_file: Path
    pki: Path
    homes: Path

    def _run(self, argv: list[str], ok: bool = True, mesh_file: Path | None = None,
             **kw) -> subprocess.CompletedProcess:
        env = {**os.environ, "SESPHR_MESH": str(mesh_file or self.mesh_file)}
        proc = subprocess.run(argv, capture_output=True, timeout=CLI_TIMEOUT, env=env, **kw)
        if ok and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stderr.decode()}")
        return proc

    def home(self, user: str) -> Path:
        return self.homes / user

    def rust(self, user: str, *args: str, ok: bool = True,
             mesh_file: Path | None = None) -> subprocess.CompletedProcess:
        """The Rust `sesphr` CLI as `user` (with another mesh file if given)."""
        return self._run([str(bin_dir() / "sesphr"), "--home", str(self.home(user)), *args], ok,
                         mesh_file)

    def py(self, user: str, *args: str, ok: bool = True,
           mesh_file: Path | None = None) -> subprocess.CompletedProcess:
        """The Python CLI (`python -m sesphr_client`) as `user`."""
        return self._run([sys.executable, "-m", "sesphr_client", "--home", str(self.home(user)),
                          *args], ok, mesh_file, cwd=CLIENT_DIR)

    def operator(self) -> Operator:
        """The dev operator (DIR/pki/operator.pem, of the service CA), trusting DIR/pki/ca.pem."""
        return Operator(MeshFile.load(self.mesh_file), self.pki / "operator.pem",
                        self.pki / "operator.key", self.pki / "ca.pem")

    def invite(self, user_id: str, role: str, valid_for_secs: int = 0) -> Invitation:
        """An operator's invitation for `user_id` as `role`."""
        with self.operator() as op:
            return op.invite(user_id, role, valid_for_secs)

    def enroll(self, client: str, user: str, role: str) -> subprocess.CompletedProcess:
        """Enrolls `user` (profile and id) with the "py" or "rust" CLI: a patient registers
        herself (the dev mesh allows it), anyone else with an operator's invitation."""
        args = ["enroll", "--id", user, "--role", role]
        if role != "patient":
            args += ["--invitation", self.invite(user, role).invitation]
        return {"py": self.py, "rust": self.rust}[client](user, *args)

    def toml(self) -> dict:
        return tomllib.loads(self.mesh_file.read_text())

    def node_urls(self) -> dict[int, str]:
        return {n["index"]: n["url"] for n in self.toml()["srs_nodes"]}

    def variant(self, path: Path, node_urls: dict[int, str] | None = None, **top) -> Path:
        """A copy of the mesh file at `path` with some nodes' URLs (or top-level keys)
        changed: the same mesh as some client would see it with nodes away or moved."""
        data = self.toml()
        data.update(top)
        for n in data["srs_nodes"]:
            n["url"] = (node_urls or {}).get(n["index"], n["url"])
        path.write_text(write_mesh_toml(data))
        return path


def write_mesh_toml(data: dict) -> str:
    """The mesh file's TOML: top-level strings and integers, then [[srs_nodes]], [timeouts]
    and [audit] with its [[audit.witnesses]]; any other table is an error, not dropped."""
    def value(v) -> str:
        if isinstance(v, int):
            return str(v)
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def scalars(table: dict) -> list[str]:
        return [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, (list, dict))]

    unknown = {k for k, v in data.items() if isinstance(v, (list, dict))} - {
        "srs_nodes", "timeouts", "audit"}
    if unknown:
        raise ValueError(f"write_mesh_toml cannot write {sorted(unknown)}")
    lines = scalars(data)
    for node in data.get("srs_nodes", []):
        lines += ["", "[[srs_nodes]]", *scalars(node)]
    if "timeouts" in data:
        lines += ["", "[timeouts]", *scalars(data["timeouts"])]
    if "audit" in data:
        audit = data["audit"]
        if {k for k, v in audit.items() if isinstance(v, (list, dict))} - {"witnesses"}:
            raise ValueError(f"write_mesh_toml cannot write [audit] {sorted(audit)}")
        lines += ["", "[audit]", *scalars(audit)]
        for w in audit.get("witnesses", []):
            lines += ["", "[[audit.witnesses]]", *scalars(w)]
    return "\n".join(lines) + "\n"


def dead_url() -> str:
    """An https URL on loopback where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def _pump(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        lines.put(line.decode(errors="replace").rstrip("\n"))
    lines.put(None)


def _start_mesh(root: Path, *args: str):
    """Runs `sesphrd dev` in `root` (extra arguments: `args`) until the generator is closed."""
    sesphrd = bin_dir() / "sesphrd"
    for b in (sesphrd, bin_dir() / "sesphr"):
        if not b.exists():
            pytest.fail(f"{b} is missing: run `cargo build --bin sesphrd --bin sesphr` "
                        "(clients/python/run-tests.sh does)")
    log = open(root / "sesphrd.log", "wb")
    proc = subprocess.Popen([str(sesphrd), "dev", "--data-dir", str(root / "data"),
                             "--base-port", "0", *args],
                            stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    if os.environ.get("SESPHR_TEST_PIDFILE"):  # run-tests.sh's trap stops it even if we cannot
        with open(os.environ["SESPHR_TEST_PIDFILE"], "a") as f:
            f.write(f"{proc.pid}\n")
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    mesh_file = None
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while mesh_file is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"sesphrd dev did not start within {START_TIMEOUT}s")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"sesphrd dev exited ({proc.wait()}); see {root / 'sesphrd.log'}")
            if line.startswith("mesh file: "):
                mesh_file = Path(line.removeprefix("mesh file: "))
        homes = root / "homes"
        homes.mkdir()
        yield Mesh(root, mesh_file, root / "data" / "pki", homes)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory) -> Mesh:
    """The default dev mesh: the setup service and 3 re-encryption nodes, any 2 of which
    re-encrypt."""
    yield from _start_mesh(tmp_path_factory.mktemp("mesh"))


@pytest.fixture(scope="session")
def mesh1(tmp_path_factory) -> Mesh:
    """A second mesh with a single re-encryption node (threshold 1), started on first use."""
    yield from _start_mesh(tmp_path_factory.mktemp("mesh1"), "--srs-nodes", "1", "--threshold", "1")

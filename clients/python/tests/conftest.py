"""A real `sesphrd dev` mesh on loopback for the interoperability tests.

The binaries come from $SESPHR_BIN_DIR (run-tests.sh sets it) or
target/debug. The mesh runs in a temporary directory with `--base-port 0`
and is always stopped at the end of the session.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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

    def _run(self, argv: list[str], ok: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, timeout=CLI_TIMEOUT,
                              env={**os.environ, "SESPHR_MESH": str(self.mesh_file)}, **kw)
        if ok and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stderr.decode()}")
        return proc

    def home(self, user: str) -> Path:
        return self.homes / user

    def rust(self, user: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        """The Rust `sesphr` CLI as `user`."""
        return self._run([str(bin_dir() / "sesphr"), "--home", str(self.home(user)), *args], ok)

    def py(self, user: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        """The Python CLI (`python -m sesphr_client`) as `user`."""
        return self._run([sys.executable, "-m", "sesphr_client", "--home", str(self.home(user)),
                          *args], ok, cwd=CLIENT_DIR)


def _pump(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        lines.put(line.decode(errors="replace").rstrip("\n"))
    lines.put(None)


@pytest.fixture(scope="session")
def mesh(tmp_path_factory) -> Mesh:
    sesphrd = bin_dir() / "sesphrd"
    for b in (sesphrd, bin_dir() / "sesphr"):
        if not b.exists():
            pytest.fail(f"{b} is missing: run `cargo build --bin sesphrd --bin sesphr` "
                        "(clients/python/run-tests.sh does)")
    root = tmp_path_factory.mktemp("mesh")
    log = open(root / "sesphrd.log", "wb")
    proc = subprocess.Popen([str(sesphrd), "dev", "--data-dir", str(root / "data"), "--base-port", "0"],
                            stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    if os.environ.get("SESPHR_TEST_PIDFILE"):  # run-tests.sh's trap stops it even if we cannot
        Path(os.environ["SESPHR_TEST_PIDFILE"]).write_text(str(proc.pid))
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

"""One private Redis per test session, on a free port: tests never share a broker with anything else.

Started on first use (``redis_url(db)``) with no persistence, stopped at exit. Two test sessions
running side by side (two checkouts, CI and a developer) therefore never consume each other's
messages, and no test touches the Redis on the default port.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time

_server: dict[str, object] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start() -> int:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("the stack tests need redis-server on PATH (apt install redis-server)")
    workdir = tempfile.mkdtemp(prefix="advrec-test-redis-")
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--dir", workdir, "--databases", "32"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            _server.update(proc=proc, port=port, dir=workdir)
            atexit.register(_stop)
            return port
    raise RuntimeError("could not start a private redis-server")


def _stop() -> None:
    proc = _server.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    shutil.rmtree(str(_server.get("dir", "")), ignore_errors=True)


def redis_url(db: int = 0) -> str:
    """URL of database ``db`` of this session's private Redis (started on first call)."""
    port = _server.get("port") or _start()
    return f"redis://127.0.0.1:{port}/{db}"

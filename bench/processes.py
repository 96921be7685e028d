"""Child processes the benchmark owns: the two kinds of server, and a throw-away ``redis-server``.

Every class here stops its process in ``stop()`` (SIGTERM, then SIGKILL) and is safe to stop
twice; the runner registers each ``stop`` before it starts the process, so Ctrl-C leaves nothing
behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import redis

from bench._server import READY_EVENT, STATS_EVENT

_READY_TIMEOUT_S: Final = 30.0
_STATS_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 10.0
_POLL_S: Final = 0.02
_REPO_ROOT: Final = Path(__file__).resolve().parent.parent
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """No honest figures are possible: a process failed or a sanity check did not hold."""


def _stop_process(process: subprocess.Popen[bytes] | None) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            return process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=_STOP_TIMEOUT_S)


class ServerProcess:
    """``python -m <module> <args>`` in the repository root, stdout (JSON lines) kept in a file.

    Args:
        name: how reports and errors call it (``echo``, ``broker (redis)``).
        module: the module to run, e.g. ``bench.serve_echo``.
        args: its command-line arguments.
        workdir: where its stdout and stderr files go.
    """

    def __init__(self, name: str, module: str, args: Sequence[str], workdir: Path) -> None:
        self.name = name
        slug = "".join(c if c.isalnum() else "-" for c in name)
        self._argv = [sys.executable, "-m", module, *args]
        self._stdout = workdir / f"{slug}.stdout.jsonl"
        self._stderr = workdir / f"{slug}.stderr.txt"
        self._process: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._snapshots = 0
        self.port = 0

    def start(self) -> int:
        """Start the process and return the port it announced.

        Raises:
            BenchError: it exited, or announced nothing within the time limit.
        """
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self._process = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
                self._argv, cwd=_REPO_ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        ready = self._wait_for(READY_EVENT, None, _READY_TIMEOUT_S)
        self.port = int(ready["port"])
        return self.port

    def stats(self) -> dict[str, Any]:
        """The server's counters right now (SIGUSR1, then its ``bench.stats`` line).

        Raises:
            BenchError: the process is gone or did not answer in time.
        """
        if self._process is None or self._process.poll() is not None:
            raise BenchError(f"{self.name} is not running{self._stderr_tail()}")
        self._snapshots += 1
        self._process.send_signal(signal.SIGUSR1)
        return self._wait_for(STATS_EVENT, self._snapshots, _STATS_TIMEOUT_S)

    def rss_bytes(self) -> int | None:
        """Resident memory of the process right now (``VmRSS`` from ``/proc``)."""
        if self._process is None:
            return None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (all threads), from ``/proc``."""
        if self._process is None:
            return None
        try:
            stat = Path(f"/proc/{self._process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is field 3
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def stop(self) -> int | None:
        """Stop the process (idempotent); its exit code, or ``None`` if it never started."""
        process, self._process = self._process, None
        return _stop_process(process)

    def _wait_for(self, event: str, seq: int | None, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            with self._stdout.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
            complete = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
            self._offset += complete
            for line in chunk[:complete].splitlines():
                if b'"event": "bench.' not in line:
                    continue  # the server's own log lines (rpc.completed, ...)
                found = json.loads(line)
                if found.get("event") == event and (seq is None or found.get("seq") == seq):
                    return dict(found)
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise BenchError(
                    f"{self.name} exited (code {code}) before '{event}'{self._stderr_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} wrote no '{event}' within {timeout:g} s")
            time.sleep(_POLL_S)  # polling a child's output file: there is nothing to await

    def _stderr_tail(self) -> str:
        text = self._stderr.read_text(errors="replace")[-1500:] if self._stderr.exists() else ""
        return f"; its stderr ends:\n{text}" if text.strip() else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A private ``redis-server`` on a free loopback port, no persistence (as the test suite's)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (make bench installs it with apt-get)")
        self._binary = binary
        self._dir = workdir / "redis"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and return once it answers PING.

        Raises:
            BenchError: it exited or did not answer in time.
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self._binary,
            *("--save", ""),
            *("--appendonly", "no"),
            *("--port", str(self.port)),
            *("--bind", "127.0.0.1"),
            *("--dir", str(self._dir)),
            *("--logfile", str(self._dir / "redis.log")),
        ]
        self._process = subprocess.Popen(  # noqa: S603  (the redis-server found on PATH)
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            try:
                if self._client.ping():
                    return
            except redis.RedisError:
                pass
            if self._process.poll() is not None:
                raise BenchError(f"redis-server on port {self.port} exited at start")
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server on port {self.port} did not answer PING in time")
            time.sleep(_POLL_S)  # waiting for a child process to listen

    def command_calls(self) -> dict[str, int]:
        """``INFO commandstats`` as {command: calls so far} (this INFO counts in the next one)."""
        if self._client is None:
            raise BenchError("redis-server is not running")
        stats: Mapping[str, Any] = self._client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(fields["calls"])
            for name, fields in stats.items()
            if isinstance(fields, Mapping)
        }

    def stop(self) -> None:
        """Stop it (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
        process, self._process = self._process, None
        _stop_process(process)


def h2load_binary(*, install: bool) -> str | None:
    """The path of ``h2load``; with ``install``, install Debian's nghttp2-client if it is absent."""
    found = shutil.which("h2load")
    if found or not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "nghttp2-client"],
    ):
        done = subprocess.run(argv, capture_output=True, check=False, timeout=300)  # noqa: S603
        if done.returncode != 0:
            return None
    return shutil.which("h2load")

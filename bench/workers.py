"""``python -m bench.workers``: warm GetAuthorization throughput, ``serve --workers 2`` vs 1.

Two real ``credential-broker serve`` processes, one with ``--workers 1`` and one with
``--workers 2``, share a private Redis and the control-plane emulator (its own process). h2load
sends the warm request (the background task's header, served from each worker's L1) over many
connections, since the kernel spreads connections, not requests, over the workers. Runs alternate
(1 worker, 2 workers, 1, 2, …) so a noisy phase of the machine hits both; each figure is the median
of its runs, and the ratio is 2 workers over 1.

Around every run each worker's ``/metrics`` (worker *i* serves its own ops listener) must count the
run's requests exactly, all OK; the per-worker split, the brokers' CPU time per request and the
Redis commands the run caused are reported with the figures.

Exits 0 with the figures, 1 when a process failed or a run did not fully succeed, 130 on Ctrl-C.
This module also holds the process wrappers :mod:`bench.cold_fleet` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import h2load, payload
from bench.entry import Failed, measure, progress_printer
from bench.h2load import LoadSettings
from bench.model import EXCLUDED_REDIS_COMMANDS
from bench.processes import BenchError, RedisProcess, free_port, h2load_binary
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.adapters.sealing import generate_kek_line
from cb_emulator import DEV_ACCOUNT, DEV_TOKEN

_READY_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 20.0
_CALL_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 0.05
_REPO_ROOT: Final = Path(__file__).resolve().parent.parent
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
# A long serve window: no assertion is refreshed while the runs last.
_ASSERTION_TTL_S: Final = "280"
_REFRESH_MARGIN_S: Final = "20"

# Opening a Redis connection (the pool adds one now and then, outside any call): counted apart
# from the commands a call could have made.
_CONNECTION_SETUP: Final = frozenset({"hello", "client|setname"})

Progress = Callable[[str], None]


def _stop(process: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM (the broker drains), then SIGKILL if it overruns; the exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=_STOP_TIMEOUT_S)


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace")[-1500:] if path.exists() else ""
    return f"; its stderr ends:\n{text}" if text.strip() else ""


class EmulatorProcess:
    """``credential-broker-emulator`` on a free loopback port, accepting the development token."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._stderr = workdir / "emulator.stderr.txt"
        self._stdout = workdir / "emulator.stdout.jsonl"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The control plane's base URL (``BROKER_CONTROLPLANE_URL``)."""
        return f"http://127.0.0.1:{self.port}/backend-api"

    def start(self) -> None:
        """Start it and return once ``/_emulator/stats`` answers.

        Raises:
            BenchError: it exited or did not answer in time.
        """
        token = f"{DEV_TOKEN}:{DEV_ACCOUNT.account_id}:{DEV_ACCOUNT.user_id}"
        argv = [
            sys.executable,
            *("-m", "cb_emulator"),
            *("--listen", f"127.0.0.1:{self.port}"),
            *("--token", token),
            *("--log-level", "warning"),
        ]
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self._process = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
                argv, cwd=_REPO_ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError, BenchError):
                self.stats()
                return
            if self._process.poll() is not None:
                raise BenchError(f"the emulator exited at start{_tail(self._stderr)}")
            if time.monotonic() > deadline:
                raise BenchError("the emulator did not answer in time")
            time.sleep(_POLL_S)  # waiting for a child process to listen

    def stats(self) -> dict[str, Any]:
        """The emulator's counters (``GET /_emulator/stats``).

        Raises:
            BenchError: it answered with an error.
        """
        reply = httpx.get(f"http://127.0.0.1:{self.port}/_emulator/stats", timeout=5)
        if reply.status_code != 200:
            raise BenchError(f"emulator stats: HTTP {reply.status_code}")
        stats: dict[str, Any] = reply.json()
        return stats

    def stop(self) -> None:
        """Stop it (idempotent)."""
        process, self._process = self._process, None
        _stop(process)


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """What every broker of a run shares: the store, its KEK, the token and the control plane."""

    redis_url: str
    kek: Path
    token: Path
    controlplane_url: str

    @classmethod
    def create(cls, workdir: Path, redis_url: str, controlplane_url: str) -> BrokerFiles:
        """Write a fresh KEK and the development token into ``workdir`` (mode 0600)."""
        kek, token = workdir / "kek", workdir / "token"
        kek.write_text(generate_kek_line() + "\n")
        token.write_text(DEV_TOKEN + "\n")
        for path in (kek, token):
            path.chmod(0o600)
        return cls(redis_url, kek, token, controlplane_url)


class BrokerProcess:
    """``credential-broker serve --workers N`` on a free loopback port; stdout kept in a file.

    Each worker serves its own ops listener (``BROKER_OPS_LISTEN=127.0.0.1:0``), named in its
    ``broker.started`` line; that is where the per-worker counters are read.
    """

    def __init__(
        self, name: str, workers: int, files: BrokerFiles, workdir: Path, log_level: str = "info"
    ) -> None:
        self.name = name
        self.workers = workers
        self.port = free_port()
        slug = "".join(c if c.isalnum() else "-" for c in name)
        self._stdout = workdir / f"{slug}.stdout.jsonl"
        self._stderr = workdir / f"{slug}.stderr.txt"
        base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        self._env = {
            **base,
            "BROKER_LISTEN": f"127.0.0.1:{self.port}",
            "BROKER_OPS_LISTEN": "127.0.0.1:0",
            "BROKER_REDIS_URL": files.redis_url,
            "BROKER_KEK_FILE": str(files.kek),
            "BROKER_BEARER_TOKEN_FILE": str(files.token),
            "BROKER_CONTROLPLANE_URL": files.controlplane_url,
            "BROKER_SUPPORTED_HOSTS": "127.0.0.1",
            "BROKER_ACCOUNT_ID": DEV_ACCOUNT.account_id,
            "BROKER_USER_ID": DEV_ACCOUNT.user_id,
            "BROKER_ASSERTION_TTL": _ASSERTION_TTL_S,
            "BROKER_REFRESH_MARGIN": _REFRESH_MARGIN_S,
            "BROKER_STATS_INTERVAL": "3600",
            "BROKER_GRACE_PERIOD": "2",
            "BROKER_LOG_LEVEL": log_level,
            "BROKER_WORKERS": str(workers),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self.started: list[dict[str, Any]] = []
        """The ``broker.started`` line of each worker, by worker index."""

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and return once every worker has written ``broker.started``.

        Raises:
            BenchError: it exited, or not every worker started in time.
        """
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "broker", "serve"],
                cwd=_REPO_ROOT,
                env=self._env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            started = {int(e.get("worker", 0)): e for e in self.events("broker.started")}
            if len(started) == self.workers:
                self.started = [started[i] for i in range(self.workers)]
                return
            if self._process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited ({self._process.returncode}) at start{_tail(self._stderr)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {len(started)} of {self.workers} workers started")
            time.sleep(_POLL_S)  # polling a child's output file: there is nothing to await

    def events(self, event: str) -> list[dict[str, Any]]:
        """The ``event`` lines its processes wrote so far (the supervisor's and every worker's)."""
        found = []
        for line in self._stdout.read_bytes().splitlines():
            if f'"event": "{event}"'.encode() in line:
                with contextlib.suppress(ValueError):  # a line being written
                    found.append(json.loads(line))
        return found

    def served(self) -> list[Counter[str]]:
        """Per worker: finished GetAuthorization calls by gRPC code, from its ``/metrics``.

        Raises:
            BenchError: a worker's ops listener did not answer.
        """
        counts: list[Counter[str]] = []
        for worker in self.started:
            try:
                text = httpx.get(f"http://{worker['ops_listen']}/metrics", timeout=5).text
            except httpx.TransportError as exc:
                raise BenchError(f"{self.name}: worker {worker.get('worker', 0)}: {exc}") from exc
            codes: Counter[str] = Counter()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if (
                        sample.name == "broker_rpcs_total"
                        and sample.labels.get("method") == "GetAuthorization"
                    ):
                        codes[sample.labels["code"]] += int(sample.value)
            counts.append(codes)
        return counts

    def cpu_seconds(self) -> float:
        """User + system CPU time of every worker so far (the supervisor idles)."""
        total = 0.0
        for worker in self.started:
            try:
                stat = Path(f"/proc/{worker['pid']}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is field 3
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        return total

    def warm(self, connections: int) -> None:
        """Ask for the background header over ``connections`` connections (so every worker holds
        it in L1) and check that each answer is an assertion.

        Raises:
            BenchError: a call failed or did not answer an assertion.
        """
        options = [("grpc.use_local_subchannel_pool", 1)]
        for _ in range(connections):
            with grpc.insecure_channel(self.address, options=options) as channel:
                stub = pb_grpc.CredentialBrokerStub(channel)
                try:
                    reply = stub.GetAuthorization(payload.request(), timeout=_CALL_TIMEOUT_S)
                except grpc.RpcError as exc:
                    raise BenchError(f"warm-up call to {self.name} failed: {exc}") from exc
            if reply.authorization.scheme != pb.SCHEME_AGENT_ASSERTION:
                raise BenchError(f"{self.name} answered no assertion to the warm-up call")

    def stop(self) -> int | None:
        """Stop it (SIGTERM drains every worker; idempotent); its exit code."""
        process, self._process = self._process, None
        return _stop(process)


# -- the runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkersRun:
    """One h2load run against one broker."""

    round: int
    workers: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    per_worker: list[int]
    """Requests each worker answered (from its own ``/metrics``)."""
    redis_commands: dict[str, int]
    """Redis commands by name during the run, the broker's background ones left out."""


@dataclass(slots=True)
class WorkersResult:
    """Both brokers' runs and the figures drawn from them."""

    requests: int
    connections: int
    streams: int
    environment: dict[str, Any]
    runs: list[WorkersRun] = field(default_factory=list)

    def median(self, workers: int, name: str) -> float:
        """The median of one figure over the runs with ``workers`` workers."""
        return float(statistics.median(getattr(r, name) for r in self.runs if r.workers == workers))

    def round_ratios(self) -> list[float]:
        """2 workers / 1 worker req/s, per round."""
        by_round: dict[int, dict[int, float]] = {}
        for run in self.runs:
            by_round.setdefault(run.round, {})[run.workers] = run.req_per_s
        return [pair[2] / pair[1] for _, pair in sorted(by_round.items())]

    def summary(self) -> dict[str, Any]:
        """Everything as plain data (``--json``)."""
        figures = {
            f"workers_{n}": {
                name: round(self.median(n, name), 3)
                for name in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")
            }
            for n in (1, 2)
        }
        return {
            "requests": self.requests,
            "connections": self.connections,
            "streams": self.streams,
            "environment": self.environment,
            **figures,
            "ratio": round(self.median(2, "req_per_s") / self.median(1, "req_per_s"), 3),
            "round_ratios": [round(r, 3) for r in self.round_ratios()],
            "redis_commands": sum(
                n
                for r in self.runs
                for k, n in r.redis_commands.items()
                if k not in _CONNECTION_SETUP
            ),
            "redis_connection_setup_commands": sum(
                n for r in self.runs for k, n in r.redis_commands.items() if k in _CONNECTION_SETUP
            ),
            "runs": [asdict(r) for r in self.runs],
        }


def _redis_delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Redis commands by name between two ``INFO commandstats``, the background ones left out."""
    delta = {name: after[name] - before.get(name, 0) for name in sorted(after)}
    return {k: v for k, v in delta.items() if v and k not in EXCLUDED_REDIS_COMMANDS}


def _run(
    broker: BrokerProcess,
    redis: RedisProcess,
    binary: str,
    body: Path,
    settings: LoadSettings,
    workdir: Path,
    index: int,
) -> WorkersRun:
    """One h2load run, checked against every worker's own OK counter."""
    broker.warm(settings.connections)
    before, cpu_before, redis_before = broker.served(), broker.cpu_seconds(), redis.command_calls()
    result = h2load.run_h2load(
        binary, broker.port, body, settings, workdir, f"{broker.name} {index}"
    )
    cpu = broker.cpu_seconds() - cpu_before
    redis_commands = _redis_delta(redis.command_calls(), redis_before)
    after = broker.served()
    per_worker = [a - b for a, b in zip(after, before, strict=True)]
    total: Counter[str] = sum(per_worker, Counter())
    if total != Counter({"OK": settings.requests}):
        raise BenchError(
            f"{broker.name}: {settings.requests} HTTP 200s, but the workers counted {dict(total)}"
        )
    return WorkersRun(
        round=index,
        workers=broker.workers,
        req_per_s=result.req_per_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us_per_request=cpu / settings.requests * 1e6,
        per_worker=[c["OK"] for c in per_worker],
        redis_commands=redis_commands,
    )


def run_workers_bench(
    settings: LoadSettings, rounds: int, binary: str, workdir: Path, progress: Progress
) -> WorkersResult:
    """Start Redis, the emulator and both brokers; alternate the runs; stop everything.

    Raises:
        BenchError: a process failed to start or a run did not fully succeed.
    """
    body = workdir / "body.bin"
    body.write_bytes(payload.request_body())
    result = WorkersResult(
        requests=settings.requests,
        connections=settings.connections,
        streams=settings.streams,
        environment={"cpus": os.cpu_count(), "h2load": h2load.version(binary)},
    )
    with contextlib.ExitStack() as cleanup:
        redis = RedisProcess(workdir)
        cleanup.callback(redis.stop)
        redis.start()
        emulator = EmulatorProcess(workdir)
        cleanup.callback(emulator.stop)
        emulator.start()
        files = BrokerFiles.create(workdir, redis.url, emulator.base_url)
        brokers = [BrokerProcess(f"{n} worker(s)", n, files, workdir) for n in (1, 2)]
        for broker in brokers:
            cleanup.callback(broker.stop)
            broker.start()
            progress(f"{broker.name} on {broker.address}")
        loops = {str(w.get("event_loop", "unknown")) for b in brokers for w in b.started}
        result.environment["event_loops"] = sorted(loops)
        for index in range(1, rounds + 1):
            for broker in brokers:
                run = _run(broker, redis, binary, body, settings, workdir, index)
                result.runs.append(run)
                progress(
                    f"round {index}/{rounds}, {broker.name}: {run.req_per_s:,.0f} req/s, "
                    f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                    f"{run.cpu_us_per_request:.0f} CPU us/req, per worker {run.per_worker}"
                )
    return result


def _table(summary: Mapping[str, Any]) -> str:
    one, two = summary["workers_1"], summary["workers_2"]
    rows = [
        f"warm GetAuthorization, {summary['requests']:,} requests per run over "
        f"{summary['connections']} connections x {summary['streams']} streams, "
        f"{summary['environment']['cpus']} CPUs, medians of {len(summary['round_ratios'])} rounds",
        f"{'':12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}",
    ]
    for label, fig in (("1 worker", one), ("2 workers", two)):
        rows.append(
            f"{label:12} {fig['req_per_s']:>10,.0f} {fig['p50_ms']:>8.2f} {fig['p99_ms']:>8.2f} "
            f"{fig['cpu_us_per_request']:>11.0f}"
        )
    rounds = ", ".join(f"{r:.2f}" for r in summary["round_ratios"])
    rows.append(f"2 workers / 1 worker: {summary['ratio']:.2f} (per round: {rounds})")
    rows.append(
        f"Redis commands during the runs (warm path): {summary['redis_commands']}, and "
        f"{summary['redis_connection_setup_commands']} opening connections"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8, help="per connection")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    progress = progress_printer("bench.workers", quiet=args.quiet)
    binary = h2load_binary(install=False)
    if binary is None:
        sys.stderr.write("bench.workers: h2load not found; install nghttp2-client\n")
        return 1
    settings = LoadSettings(args.requests, args.connections, args.streams)
    try:
        result = measure(
            "bench.workers",
            lambda workdir: run_workers_bench(settings, args.rounds, binary, workdir, progress),
            progress,
        )
    except Failed as failed:
        return failed.code
    summary = result.summary()
    sys.stdout.write((json.dumps(summary, indent=2) if args.json else _table(summary)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

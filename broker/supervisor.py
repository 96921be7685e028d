"""``serve --workers N``: N broker processes on one port, and the parent that keeps them running.

Theory of operation
-------------------
One broker process runs Python on one core at a time, however many cores the node has. With
``BROKER_WORKERS`` above 1, ``serve`` becomes a *supervisor*: it starts that many *workers*, each a
complete broker (its own gRPC server, its own in-process L1 cache, its own connections to Redis and
the control plane), all bound to the same port with ``SO_REUSEPORT``. The kernel spreads incoming
*connections* over the listening sockets (a hash of each connection's addresses), so the calls of
one long-lived connection all go to one worker: several clients, or a client with several
connections, are what spread the load. The workers share every credential through Redis exactly
as replicas on separate nodes do, so a registration still happens once per fleet (the Redis lock of
the single flight is held across processes); only the warm path (an L1 hit: no Redis, no signature)
is per worker.

The supervisor holds no credential and never opens the store. It reads and validates the settings
(``serve`` fails before any worker starts on an invalid setting) and hands them to each worker over
a socket pair on the worker's stdin, pickled. A restarted worker therefore runs exactly the settings
the others run, even if the configuration file changed since. The same socket carries one line back,
``ready``, once the worker serves.

- *Start*: worker 0 first, alone, so a start-up error (a missing KEK, a port that is taken) is
  reported once; then the others together. A worker that exits before it ever served would fail
  again: the supervisor stops the others and exits with its status (``supervisor.worker_failed``).
- *Restart*: a worker that exits later (a crash, a kill, an operator's SIGTERM to its pid) is started
  again after a backoff that doubles from 0.5 s up to 30 s and falls back to 0.5 s once a worker has
  served for a minute (``supervisor.worker_exited``). The others keep serving the port meanwhile.
- *Stop*: SIGTERM or SIGINT is forwarded to every worker as SIGTERM; each drains as a single broker
  does (health NOT_SERVING, in-flight RPCs get ``BROKER_GRACE_PERIOD``). The supervisor exits once
  all have stopped: 0 when every worker drained. A worker still running 5 s after its grace period
  is killed (``supervisor.worker_killed``).
- *Orphans*: each worker asks the kernel for SIGTERM when the supervisor dies
  (``PR_SET_PDEATHSIG``), so a supervisor killed with SIGKILL leaves no worker holding the port.

The ops listener (``BROKER_OPS_LISTEN``): worker *i* serves ``/metrics``, ``/healthz`` and
``/readyz`` on the configured port + *i* (port 0: each picks a free one, named in its
``broker.started`` line). One shared port would answer each scrape from whichever worker the kernel
picked, so every counter would jump between workers' values; separate ports keep each worker's
series monotonic and let Prometheus add them. Probes of the configured port reach worker 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pickle
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Final

import structlog

from broker.config import Settings
from broker.errors import ConfigError
from broker.events import Event
from broker.logs import configure_logging

log = structlog.get_logger("broker.supervisor")

RESTART_DELAY_MIN_S: Final = 0.5
RESTART_DELAY_MAX_S: Final = 30.0
STABLE_AFTER_S: Final = 60.0
"""A worker that served this long before it exited restarts after the shortest delay again."""
STOP_MARGIN_S: Final = 5.0
"""Beyond the grace period, how long a stopping worker may take to close before it is killed."""
READY: Final = b"ready\n"
# -P: the current directory is not put on sys.path, so a "broker" directory there cannot stand in.
_WORKER_ARGV: Final = ("-P", "-m", "broker", "serve", "--supervised-worker")
_LENGTH: Final = struct.Struct("!I")
_PR_SET_PDEATHSIG: Final = 1
# Signals a worker may die of when the supervisor forwards a stop before its handlers are set.
_STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker receives from its supervisor.

    Attributes:
        index: its place among the workers, 0 to ``settings.workers - 1``.
        supervisor_pid: the supervisor's pid (the worker stops when that process is gone).
        settings: the settings to serve, with the worker's own ops listener address.
    """

    index: int
    supervisor_pid: int
    settings: Settings


def restart_delay(quick_exits: int) -> float:
    """Seconds before a worker is started again after its ``quick_exits``-th exit in a row."""
    return min(RESTART_DELAY_MAX_S, RESTART_DELAY_MIN_S * 2.0 ** max(quick_exits - 1, 0))


def worker_settings(settings: Settings, index: int) -> Settings:
    """``settings`` for worker ``index``: its ops listener on the configured port + ``index``."""
    if settings.ops_listen is None:
        return settings
    host, _, port = settings.ops_listen.rpartition(":")
    offset_port = int(port) + index if int(port) else 0
    return replace(settings, ops_listen=f"{host}:{offset_port}")


@dataclass(slots=True)
class _Slot:
    """One worker position: the process filling it now, and its history."""

    index: int
    first_ready: asyncio.Future[bool]
    process: asyncio.subprocess.Process | None = None
    served: bool = False
    quick_exits: int = 0
    last_code: int | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs ``settings.workers`` workers on one port until SIGTERM or SIGINT.

    Args:
        settings: validated settings with ``workers`` above 1.
        argv: how to start a worker (default: this interpreter, ``-m broker serve`` in worker mode).
    """

    def __init__(self, settings: Settings, *, argv: tuple[str, ...] | None = None) -> None:
        self._settings = settings
        self._argv = argv or (sys.executable, *_WORKER_ARGV)
        self._slots: list[_Slot] = []
        self._stopping = asyncio.Event()
        self._failure: int | None = None
        self._kill_timer: asyncio.TimerHandle | None = None

    async def run(self) -> int:
        """Start the workers, keep them running, drain them on a signal; the exit status."""
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self._stop, signal.Signals(signum).name)
        self._slots = [_Slot(i, loop.create_future()) for i in range(self._settings.workers)]
        try:
            async with asyncio.TaskGroup() as group:
                first, *others = self._slots
                group.create_task(self._keep_running(first))
                if await first.first_ready:
                    for slot in others:
                        group.create_task(self._keep_running(slot))
                    ready = await asyncio.gather(*(slot.first_ready for slot in others))
                    if all(ready) and not self._stopping.is_set():
                        log.info(
                            Event.SUPERVISOR_STARTED,
                            listen=self._settings.listen,
                            workers=len(self._slots),
                            pid=os.getpid(),
                        )
        finally:
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        code = self._exit_code()
        log.info(Event.SUPERVISOR_STOPPED, exit_code=code)
        return code

    def _exit_code(self) -> int:
        if self._failure is not None:
            return self._failure
        # Never started (a stop came first), drained, or stopped by the forwarded signal itself.
        drained = (None, 0, *(-int(s) for s in _STOP_SIGNALS))
        return 0 if all(slot.last_code in drained for slot in self._slots) else 1

    async def _keep_running(self, slot: _Slot) -> None:
        """Fill ``slot`` until the supervisor stops: start, wait for the exit, back off, again."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            code = await self._run_once(slot)
            slot.last_code = code
            if self._stopping.is_set():
                return
            if not slot.served:
                log.error(
                    Event.SUPERVISOR_WORKER_FAILED,
                    worker=slot.index,
                    pid=slot.pids[-1],
                    exit_code=code,
                )
                self._failure = code or 1
                self._stop("worker_failed")
                return
            uptime = loop.time() - started
            slot.quick_exits = 1 if uptime >= STABLE_AFTER_S else slot.quick_exits + 1
            delay = restart_delay(slot.quick_exits)
            log.warning(
                Event.SUPERVISOR_WORKER_EXITED,
                worker=slot.index,
                pid=slot.pids[-1],
                exit_code=code,
                uptime_s=round(uptime, 3),
                restart_in_s=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, slot: _Slot) -> int:
        """Start one worker for ``slot``, hand it its settings, and wait until it exits."""
        ours, theirs = socket.socketpair()
        with ours:
            try:
                process = await asyncio.create_subprocess_exec(*self._argv, stdin=theirs.fileno())
            finally:
                theirs.close()
            slot.process = process
            slot.pids.append(process.pid)
            if self._stopping.is_set():  # a stop arrived while it was being started
                self._signal(slot, signal.SIGTERM)
            spec = WorkerSpec(
                index=slot.index,
                supervisor_pid=os.getpid(),
                settings=worker_settings(self._settings, slot.index),
            )
            reader, writer = await asyncio.open_connection(sock=ours)
            payload = pickle.dumps(spec)
            try:
                writer.write(_LENGTH.pack(len(payload)) + payload)
                await writer.drain()
                line = await reader.readline()
            except ConnectionError:  # it died before reading its settings or answering
                line = b""
            if line == READY:
                slot.served = True
                if not slot.first_ready.done():
                    slot.first_ready.set_result(True)
            code = await process.wait()
            slot.process = None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if not slot.first_ready.done():
            slot.first_ready.set_result(False)
        return code

    def _stop(self, reason: str) -> None:
        """Forward a stop to every worker (once), and arm the deadline past which they are killed."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self._settings.grace_period
        log.info(Event.SUPERVISOR_STOPPING, reason=reason, grace_seconds=grace)
        for slot in self._slots:
            self._signal(slot, signal.SIGTERM)
        self._kill_timer = asyncio.get_running_loop().call_later(
            grace + STOP_MARGIN_S, self._kill_stragglers
        )

    def _kill_stragglers(self) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                log.warning(Event.SUPERVISOR_WORKER_KILLED, worker=slot.index, pid=slot.pids[-1])
                self._signal(slot, signal.SIGKILL)

    @staticmethod
    def _signal(slot: _Slot, signum: int) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)


def supervise(settings: Settings) -> int:
    """Run the workers of ``serve --workers N`` until SIGTERM or SIGINT; the exit status."""
    return asyncio.run(Supervisor(settings).run())


# -- the worker's side ------------------------------------------------------------------------------


def _receive_spec(channel: socket.socket) -> WorkerSpec:
    """Read the supervisor's length-prefixed, pickled :class:`WorkerSpec` from ``channel``."""
    header = channel.recv(_LENGTH.size, socket.MSG_WAITALL)
    if len(header) != _LENGTH.size:
        raise ConfigError("--supervised-worker: the supervisor sent no settings")
    (length,) = _LENGTH.unpack(header)
    payload = channel.recv(length, socket.MSG_WAITALL)
    if len(payload) != length:
        raise ConfigError("--supervised-worker: the supervisor's settings were cut short")
    # Trusted: the other end of a socket pair that only this process and its parent hold.
    spec = pickle.loads(payload)  # noqa: S301
    if not isinstance(spec, WorkerSpec):
        raise ConfigError("--supervised-worker: the supervisor sent something else")
    return spec


def _stop_with_supervisor(supervisor_pid: int) -> bool:
    """Have the kernel send SIGTERM to this worker when its supervisor dies (Linux), and check that
    the supervisor is still there (it may have died before the request was made)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == supervisor_pid


def run_worker() -> int:
    """``serve --supervised-worker``: one worker, started by :class:`Supervisor`.

    Its stdin is a socket to the supervisor: the settings come in, ``ready`` goes out once the
    broker serves. Everything else is ``serve`` as one process runs it.

    Raises:
        ConfigError: stdin is not a supervisor's socket, or the settings are refused on start.
    """
    try:
        channel = socket.socket(fileno=0)  # stdin: the supervisor's socket pair
    except OSError as exc:
        raise ConfigError(
            "--supervised-worker: stdin must be a socket from 'serve --workers N' (internal flag)"
        ) from exc
    with channel:
        spec = _receive_spec(channel)
        if not _stop_with_supervisor(spec.supervisor_pid):
            return 1
        from broker.app import BrokerApp, run_event_loop, serve
        from broker.hardening import harden_process

        def ready(_app: BrokerApp) -> None:
            with contextlib.suppress(OSError):  # the supervisor is gone: PDEATHSIG stops us
                channel.sendall(READY)

        configure_logging(spec.settings.log_level, process={"worker": spec.index})
        harden_process(spec.settings)  # before any secret is read
        run_event_loop(serve(spec.settings, ready=ready, worker=spec.index))
    return 0

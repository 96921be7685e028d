"""What both server processes share: the ready line, signal handling and on-demand counters.

A server process writes JSON lines on stdout: its own log events (``rpc.completed`` …, as in
production), one ``bench.ready`` line with the port it bound, and one ``bench.stats`` line each time
it receives SIGUSR1, holding the counters the broker reports in ``broker.stats`` at that moment. The
harness reads the counters before and after each load run, so it sees exactly what the run did.
SIGTERM or SIGINT stops the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Final

READY_EVENT: Final = "bench.ready"
STATS_EVENT: Final = "bench.stats"


def _emit(line: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def serve_until_signalled(port: int, stats: Callable[[], Mapping[str, object]]) -> None:
    """Announce ``port``, answer SIGUSR1 with a ``bench.stats`` line, return on SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    sequence = itertools.count(1)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: _emit({"event": STATS_EVENT, "seq": next(sequence), **stats()})
    )
    _emit({"event": READY_EVENT, "port": port})
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)

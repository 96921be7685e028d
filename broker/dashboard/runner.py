"""``credential-broker dashboard``: read log lines, aggregate them, show or print the aggregates.

Live mode redraws the screen every ``refresh`` seconds while polling every source; ``--once``
reads what is there now (files to their end, stdin to end of input), prints one snapshot and exits.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from broker.dashboard.aggregate import Aggregator
from broker.dashboard.sources import Chunk, FileFollower, PipeReader

_POLL_S = 0.1


def _feed(aggregator: Aggregator, chunks: list[Chunk], label: str, now: float) -> None:
    for chunk in chunks:
        aggregator.feed_text(chunk.text, now, label, partial=not chunk.complete)


def _labels(paths: Sequence[str]) -> list[str]:
    """The replica name of each file's unprefixed lines: its file name, or its path if ambiguous."""
    names = [Path(p).name for p in paths]
    return [p if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def run_dashboard(
    paths: Sequence[str],
    *,
    once: bool = False,
    output: str = "table",
    window: float = 60.0,
    refresh: float = 1.0,
    stdin_fd: int = 0,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run the dashboard; returns the exit status.

    Args:
        paths: files to follow; none means stdin.
        once: print one snapshot of what can be read now and exit.
        output: ``table`` (rich) or ``json``.
        window: the sliding window, in seconds.
        refresh: seconds between redraws (live mode).
        stdin_fd: the descriptor read when no paths are given.
        out: where to print (default: stdout).
        clock: wall-clock time (seconds since the epoch).
    """
    stream = out or sys.stdout
    if not (window > 0 and refresh > 0):
        sys.stderr.write("credential-broker dashboard: --window and --refresh must be positive\n")
        return 2
    aggregator = Aggregator(window=window)
    followers = [
        FileFollower(Path(p), label) for p, label in zip(paths, _labels(paths), strict=True)
    ]
    pipe = None if paths else PipeReader(stdin_fd, "-")
    if once:
        for follower in followers:
            for chunks in follower.drain():
                _feed(aggregator, chunks, follower.label, clock())
            if follower.problem is not None:
                sys.stderr.write(
                    f"credential-broker dashboard: {follower.path}: {follower.problem}\n"
                )
                return 2
            follower.close()
        if pipe is not None:
            _feed(aggregator, pipe.drain(), pipe.label, clock())
        if output != "json" and not _has_rich():
            return 1
        _print(aggregator.snapshot(clock()), output, stream)
        return 0
    if output == "json":
        sys.stderr.write("credential-broker dashboard: --format json needs --once\n")
        return 2
    if not _has_rich():
        return 1
    return _live(aggregator, followers, pipe, refresh, stream, clock)


def _has_rich() -> bool:
    """Whether rich (the screen's library) is importable; says what to do when it is not."""
    try:
        import rich  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "credential-broker dashboard: the screen needs the 'dashboard' extra "
            "(pip install 'credential-broker[dashboard]'); '--once --format json' works without it\n"
        )
        return False
    return True


def _print(snapshot: dict[str, object], output: str, stream: TextIO) -> None:
    if output == "json":
        stream.write(json.dumps(snapshot, indent=2, sort_keys=False) + "\n")
        return
    from rich.console import Console

    from broker.dashboard.render import render

    Console(file=stream).print(render(snapshot))


def _live(
    aggregator: Aggregator,
    followers: list[FileFollower],
    pipe: PipeReader | None,
    refresh: float,
    stream: TextIO,
    clock: Callable[[], float],
) -> int:
    from rich.console import Console
    from rich.live import Live

    from broker.dashboard.render import render

    console = Console(file=stream)
    with Live(render(aggregator.snapshot(clock())), console=console, auto_refresh=False) as live:
        next_draw = 0.0
        try:
            while True:
                for follower in followers:
                    _feed(aggregator, follower.poll(), follower.label, clock())
                if pipe is not None:
                    _feed(aggregator, pipe.poll(timeout=_POLL_S), pipe.label, clock())
                    if pipe.closed:
                        live.update(render(aggregator.snapshot(clock())), refresh=True)
                        return 0
                else:
                    time.sleep(_POLL_S)  # files have no readiness to wait on: poll them
                if time.monotonic() >= next_draw:
                    live.update(render(aggregator.snapshot(clock())), refresh=True)
                    next_draw = time.monotonic() + refresh
        except KeyboardInterrupt:
            return 0
        finally:
            for follower in followers:
                follower.close()

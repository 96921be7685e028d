"""What every benchmark command does around its measurement: progress lines, SIGTERM, a working
directory removed afterwards, and the exit codes (0 measured, 1 no honest figures, 130 Ctrl-C).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.processes import BenchError

T = TypeVar("T")
Progress = Callable[[str], None]


class Failed(Exception):
    """The measurement did not finish; ``code`` is the command's exit status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup, like Ctrl-C


def progress_printer(name: str, *, quiet: bool) -> Progress:
    """A progress callback writing ``[name] line`` to stderr (nothing when ``quiet``)."""

    def progress(line: str) -> None:
        if not quiet:
            sys.stderr.write(f"[{name}] {line}\n")
            sys.stderr.flush()

    return progress


def measure(
    name: str,
    run: Callable[[Path], T],
    progress: Progress,
    *,
    keep: bool = False,
) -> T:
    """Run ``run`` in a fresh working directory (removed afterwards unless ``keep``).

    Raises:
        Failed: ``run`` raised :class:`BenchError` (code 1, the reason on stderr) or was
            interrupted (code 130; every process it started was stopped by its own cleanup).
    """
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix=f"credential-broker-{name.replace('.', '-')}-"))
    try:
        return run(workdir)
    except BenchError as exc:
        sys.stderr.write(f"{name}: FAILED: {exc}\n")
        raise Failed(1) from None
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted; every process it started was stopped\n")
        raise Failed(130) from None
    finally:
        if keep:
            progress(f"working directory kept (server logs): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

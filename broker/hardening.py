"""Keeping the broker's secrets out of core dumps and out of other users' reach on disk.

``serve`` calls :func:`harden_process` before it reads any secret: core dumps are turned off
(``RLIMIT_CORE`` 0, and on Linux ``prctl(PR_SET_DUMPABLE, 0)``, which also keeps other processes of
the same user from attaching a debugger or reading ``/proc/PID/mem``), and each secret file that
group or others may access is reported once as ``file.exposed``. The broker still starts: a
file's mode is the operator's decision, the warning makes it a visible one.

:func:`write_secret_file` is how ``kek generate --out`` writes: created exclusively with mode 0600
(whatever the umask), never through a symlink, and replaced only on request, atomically.
"""

from __future__ import annotations

import ctypes
import os
import resource
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from broker.config import Settings
from broker.events import Event

log = structlog.get_logger("broker.hardening")

PRIVATE_MODE: Final = 0o600
GROUP_OTHER: Final = 0o077
_PR_SET_DUMPABLE: Final = 4
_PR_GET_DUMPABLE: Final = 3


@dataclass(frozen=True, slots=True)
class CoreDumpState:
    """What :func:`disable_core_dumps` achieved.

    Attributes:
        core_dumps: whether a crash could still write a core file (``RLIMIT_CORE`` above 0).
        dumpable: whether the process is still dumpable (``prctl`` unavailable or refused).
        problems: what could not be done, for the operator.
    """

    core_dumps: bool
    dumpable: bool
    problems: tuple[str, ...] = ()


def disable_core_dumps() -> CoreDumpState:
    """Turn core dumps off for this process, as far as the platform allows."""
    problems: list[str] = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        problems.append(f"setrlimit(RLIMIT_CORE, 0): {exc}")
    core_dumps = resource.getrlimit(resource.RLIMIT_CORE)[0] != 0
    dumpable = True
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
                problems.append(f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(ctypes.get_errno())}")
            dumpable = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) != 0
        except (OSError, AttributeError) as exc:  # no libc or no prctl symbol: RLIMIT_CORE only
            problems.append(f"prctl unavailable: {exc}")
    else:
        problems.append(f"prctl(PR_SET_DUMPABLE) does not exist on {sys.platform}")
    return CoreDumpState(core_dumps=core_dumps, dumpable=dumpable, problems=tuple(problems))


def secret_files(settings: Settings) -> list[tuple[str, Path]]:
    """``(setting, path)`` of every configured file that holds a secret."""
    files: list[tuple[str, Path | None]] = [("kek_file", settings.kek_file)]
    for identity in settings.identities:
        files += [
            (f"identities.{identity.name}.{key}", path) for key, path in identity.secret_files
        ]
    if settings.tls is not None:
        files.append(("tls.key_file", settings.tls.key_file))
    return [(setting, path) for setting, path in files if path is not None]


def exposed_mode(path: Path) -> int | None:
    """The permission bits of ``path`` (followed) if group or others have any access, else None.

    A file that cannot be examined is not reported here: reading it fails with its own message.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & GROUP_OTHER else None


def harden_process(settings: Settings) -> None:
    """Turn core dumps off and report exposed secret files (``serve``, before any secret is read)."""
    state = disable_core_dumps()
    level = log.warning if state.problems else log.info
    level(
        Event.PROCESS_HARDENED,
        core_dumps=state.core_dumps,
        dumpable=state.dumpable,
        **({"detail": "; ".join(state.problems)} if state.problems else {}),
    )
    for setting, path in secret_files(settings):
        mode = exposed_mode(path)
        if mode is not None:
            log.warning(
                Event.FILE_EXPOSED,
                setting=setting,
                path=str(path),
                mode=f"{mode:04o}",
                detail=f"group or others can access this secret: chmod 600 {path}",
            )


def write_secret_file(path: Path, text: str, *, force: bool = False) -> None:
    """Write ``text`` to a new file at ``path`` with mode 0600.

    Args:
        path: where; an existing file or symlink there is refused unless ``force``.
        text: the content.
        force: replace whatever is at ``path`` (the path itself, never a symlink's target) by
            renaming a new private file over it.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is false.
        OSError: the file cannot be created or written.
    """
    if force:
        # A fresh private file in the same directory (so the rename is atomic), then renamed.
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        written = Path(name)
    else:
        # O_EXCL: an existing file, or a symlink planted at the path, makes this fail.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd, written = os.open(path, flags, PRIVATE_MODE), path
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), PRIVATE_MODE)  # the umask only takes bits away: exact
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(written, path)
    except BaseException:
        written.unlink(missing_ok=True)
        raise

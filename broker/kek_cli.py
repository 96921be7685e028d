"""``kek generate`` (a new key-encryption key) and ``kek reseal`` (every sealed value under the
primary key of the KEK file)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from pathlib import Path

from redis.exceptions import RedisError

from broker.adapters.sealing import generate_kek_line, load_kek_file
from broker.adapters.store import make_redis_client
from broker.adapters.store.reseal import reseal_all
from broker.config import load_settings
from broker.errors import ConfigError, StoreUnavailable
from broker.hardening import GROUP_OTHER, write_secret_file


def generate_kek(out: str | None, *, force: bool = False) -> int:
    """``kek generate``: print a new KEK line, or write it to ``out`` (mode 0600); the exit status."""
    line = generate_kek_line() + "\n"
    if out is None:
        if force:
            sys.stderr.write("credential-broker: kek generate: --force needs --out FILE\n")
            return 2
        sys.stdout.write(line)
        sys.stdout.flush()
        mode = _exposed_stdout()
        if mode is not None:
            sys.stderr.write(
                f"credential-broker: warning: the KEK went to a file readable by group or others "
                f"(mode {mode:04o}); chmod 600 it, or use 'kek generate --out FILE'\n"
            )
        return 0
    try:
        write_secret_file(Path(out), line, force=force)
    except FileExistsError:
        sys.stderr.write(f"credential-broker: {out} exists; pass --force to replace it\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"credential-broker: cannot write {out}: {exc.strerror or exc}\n")
        return 1
    sys.stderr.write(f"credential-broker: wrote a new KEK to {out} (mode 0600)\n")
    return 0


def _exposed_stdout() -> int | None:
    """The mode of stdout if it is a regular file that group or others may access."""
    try:
        info = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return None
    mode = stat.S_IMODE(info.st_mode)
    return mode if stat.S_ISREG(info.st_mode) and mode & GROUP_OTHER else None


async def run_reseal() -> int:
    """Re-seal every private key, login and cached assertion under the primary KEK.

    Prints the report as one JSON line (after any ``store.reseal_skipped`` lines); exits 1 when a
    key was skipped or unreadable, having handled every other key.
    """
    settings = load_settings(os.environ)
    if not settings.redis_url or settings.kek_file is None:
        raise ConfigError(
            "BROKER_REDIS_URL and BROKER_KEK_FILE: 'kek reseal' works on the shared store with the "
            "KEK file whose first key is the new primary (older keys after it)"
        )
    sealer = load_kek_file(settings.kek_file)
    client = make_redis_client(
        settings.redis_url, socket_timeout=5.0, connect_timeout=5.0, retries=2
    )
    try:
        report = await reseal_all(client, sealer)
    except RedisError as exc:
        # Re-running is safe: every write is a compare-and-set, and values already moved stay put.
        raise StoreUnavailable(
            f"kek reseal stopped: Redis failed ({type(exc).__name__}); run it again"
        ) from None
    finally:
        await client.aclose()
    print(json.dumps(dataclasses.asdict(report), sort_keys=True))  # noqa: T201  (the output)
    return 0 if report.complete else 1

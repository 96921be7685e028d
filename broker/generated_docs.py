"""The one command line of every generated document (``python -m broker.catalog``,
``python -m broker.config``): print it, ``--check`` it is current, or ``--write`` it."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def generated_doc_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None,
    what: str,
    default_path: Path,
    show: Callable[[], str],
    render: Callable[[str], str],
) -> int:
    """Print ``show()``, or check/write ``render(current text of the file)`` at ``--path``.

    ``render`` raises ``ValueError`` when the current text cannot take the generated part (e.g. its
    markers are missing). Returns the exit status: 1 for a stale or unusable file.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help=f"fail when the {what} is stale")
    action.add_argument("--write", action="store_true", help=f"rewrite the {what}")
    parser.add_argument(
        "--path", type=Path, default=default_path, help=f"the file ({default_path.name})"
    )
    args = parser.parse_args(argv)
    if not (args.check or args.write):
        sys.stdout.write(show())
        return 0
    path: Path = args.path
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        text = render(current)
    except ValueError as exc:
        sys.stderr.write(f"{path}: {exc}\n")
        return 1
    if args.write:
        if text != current:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return 0
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=str(path),
        tofile="generated",
        n=1,
    )
    sys.stderr.writelines(list(diff)[:60])
    sys.stderr.write(f"{path} is stale: run '{prog} --write'\n")
    return 1

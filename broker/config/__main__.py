"""``python -m broker.config [--check | --write] [--path FILE]``: the README's settings section.

Without a flag it prints the section. ``--check`` exits 1 when the README's section differs from the
settings (CI runs it through the test suite and ``make lint``); ``--write`` rewrites the section.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.config._docs import README_PATH, render_readme, render_section


def main(argv: Sequence[str] | None = None) -> int:
    """Print, check or write the README's settings section; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m broker.config", description=__doc__)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="fail when the section is stale")
    action.add_argument("--write", action="store_true", help="rewrite the section")
    parser.add_argument("--path", type=Path, default=README_PATH, help="the README (README.md)")
    args = parser.parse_args(argv)
    if not (args.check or args.write):
        sys.stdout.write(render_section())
        return 0
    path: Path = args.path
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        text = render_readme(current)
    except ValueError as exc:
        sys.stderr.write(f"{path}: {exc}\n")
        return 1
    if args.write:
        if text != current:
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
    sys.stderr.write(f"{path} is stale: run 'python -m broker.config --write'\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())

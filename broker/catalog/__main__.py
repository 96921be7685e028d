"""``python -m broker.catalog [--check | --write] [--path FILE]``: the generated events page.

Without a flag it prints the page. ``--check`` exits 1 when the file differs from the catalogue
(CI runs it through the test suite); ``--write`` rewrites the file.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.catalog import DOCS_PATH, render_markdown


def main(argv: Sequence[str] | None = None) -> int:
    """Print, check or write the events page; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m broker.catalog", description=__doc__)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="fail when the page is stale")
    action.add_argument("--write", action="store_true", help="rewrite the page")
    parser.add_argument("--path", type=Path, default=DOCS_PATH, help="the page (docs/events.md)")
    args = parser.parse_args(argv)
    text = render_markdown()
    path: Path = args.path
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
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
        sys.stderr.write(f"{path} is stale: run 'python -m broker.catalog --write'\n")
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m broker.catalog [--check | --write] [--path FILE]``: the generated events page.

Without a flag it prints the page. ``--check`` exits 1 when the file differs from the catalogue
(CI runs it through the test suite); ``--write`` rewrites the file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from broker.catalog import DOCS_PATH, render_markdown
from broker.generated_docs import generated_doc_main


def main(argv: Sequence[str] | None = None) -> int:
    """Print, check or write the events page; returns the exit status."""
    return generated_doc_main(
        argv,
        prog="python -m broker.catalog",
        description=__doc__,
        what="page",
        default_path=DOCS_PATH,
        show=render_markdown,
        render=lambda _current: render_markdown(),
    )


if __name__ == "__main__":
    sys.exit(main())

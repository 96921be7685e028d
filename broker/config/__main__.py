"""``python -m broker.config [--check | --write] [--path FILE]``: the README's settings section.

Without a flag it prints the section. ``--check`` exits 1 when the README's section differs from the
settings (CI runs it through the test suite and ``make lint``); ``--write`` rewrites the section.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from broker.config._docs import README_PATH, render_readme, render_section
from broker.generated_docs import generated_doc_main


def main(argv: Sequence[str] | None = None) -> int:
    """Print, check or write the README's settings section; returns the exit status."""
    return generated_doc_main(
        argv,
        prog="python -m broker.config",
        description=__doc__,
        what="section",
        default_path=README_PATH,
        show=render_section,
        render=render_readme,
    )


if __name__ == "__main__":
    sys.exit(main())

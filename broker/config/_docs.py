"""Text generated from the settings table: the README's settings section and ``serve --help``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Final

from broker.config import _identity, _settings
from broker.config._table import Needed, Setting

README_PATH: Final = Path(__file__).resolve().parents[2] / "README.md"
"""Where the README lives in a source checkout."""

BEGIN: Final = (
    "<!-- BEGIN settings: generated from broker/config by `python -m broker.config --write`; "
    "do not edit. A test fails when this section and the settings differ. -->"
)
END: Final = "<!-- END settings -->"


def shown_default(row: Setting) -> str:
    """The default of ``row`` as the docs show it (Markdown)."""
    if row.shown is not None:
        return row.shown
    default = row.default
    if isinstance(default, Needed) or default is None or default == ():
        return "—"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, enum.Enum):
        return f"`{default.value}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _keys(row: Setting) -> str:
    return " or ".join(f"`{key}`" for key in (row.key, *row.aliases))


def _table(rows: tuple[Setting, ...], key_column: str) -> list[str]:
    lines = [
        f"| variable | {key_column} | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        variable = f"`{row.env}`" if row.env else "—"
        if row.flag:
            variable += f" (`{row.flag}`)"
        cells = (variable, _keys(row), shown_default(row), row.doc)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render_section() -> str:
    """The README's settings section, its marker lines included."""
    refused = (*_settings.REFUSED, *_identity.REFUSED)
    lines = [
        BEGIN,
        "",
        "Broker-wide settings (top-level keys of `BROKER_CONFIG`):",
        "",
        *_table(_settings.ROWS, "`BROKER_CONFIG` key"),
        "",
        "Settings of one identity: the environment describes one (named by `BROKER_IDENTITY`); "
        "each `[identities.NAME]` table of `BROKER_CONFIG` describes one with the keys below, "
        "and then the environment may set none of them:",
        "",
        *_table(_identity.ROWS, "`[identities.NAME]` key"),
        "",
        "No longer accepted (start-up stops and names what replaces them): "
        + ", ".join(f"`{r.env}` (`{r.key}`)" for r in refused)
        + ".",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def render_readme(current: str) -> str:
    """``current`` README text with its settings section replaced by :func:`render_section`.

    Raises:
        ValueError: the README lacks the marker lines.
    """
    start = current.find(BEGIN)
    end = current.find(END, max(start, 0))
    if start < 0 or end < 0:
        raise ValueError(f"the README has no settings section ({BEGIN!r} ... {END!r})")
    after = end + len(END)
    if current[after : after + 1] == "\n":
        after += 1
    return current[:start] + render_section() + current[after:]


def serve_flags() -> tuple[tuple[str, Setting], ...]:
    """(flag, setting) of each setting that ``serve`` takes a flag for (``Setting.flag``)."""
    return tuple((row.flag, row) for row in (*_settings.ROWS, *_identity.ROWS) if row.flag)


def flag_help(row: Setting) -> str:
    """The ``--help`` text of ``row``'s flag."""
    default = _plain(shown_default(row)).strip("()")
    where = row.env if default == "—" else f"{row.env}; default {default}"
    return f"{_plain(row.doc)} ({where})".replace("%", "%%")


def _epilog_default(row: Setting) -> str:
    default = _plain(shown_default(row))
    return "" if default == "—" else default


def serve_epilog() -> str:
    """The end of ``serve --help``: every setting's variable, key and default."""
    sections = (
        ("broker-wide", "BROKER_CONFIG key", _settings.ROWS),
        ("one identity", "[identities.NAME] key", _identity.ROWS),
    )
    every = [row for _, _, rows in sections for row in rows]
    width_env = max(len(row.env or "-") for row in every) + 2
    width_key = max(len(row.key) for row in every) + 2
    lines = [
        "settings: a flag wins over its environment variable, which wins over BROKER_CONFIG (a TOML",
        "file), which wins over the default; README.md (Configuration) says what each one means.",
    ]
    for title, key_column, rows in sections:
        lines += ["", f"{title:<{width_env + 2}}{key_column:<{width_key}}default"]
        lines += [
            f"  {row.env or '-':<{width_env}}{row.key:<{width_key}}{_epilog_default(row)}".rstrip()
            for row in rows
        ]
    return "\n".join(lines)

"""The settings table: each setting is declared once, on the dataclass field that holds its value.

``field(default=..., metadata=row(...))`` makes a field one setting: the field's default is the
setting's default, and :func:`row` gives its environment variable, key in ``BROKER_CONFIG``, parser
and doc string. :func:`choice` declares a field whose class is chosen by one setting (the fields of
each class are settings again), and :func:`group` a field of a class declared elsewhere, filled
from the rows given with it. Loading (:func:`parse_rows`, :func:`build`), the README's tables and
``serve --help`` all read the rows through :func:`rows_of`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, Final, TypeVar

from broker.errors import ConfigError

T = TypeVar("T")
Parser = Callable[[str, object], object]
"""``(how messages name the setting, the value as given) -> the value``; raises ConfigError."""

_META: Final = "broker.config"


@dataclass(frozen=True, slots=True)
class Needed:
    """No default: the setting must be given once the class that holds it is chosen."""

    message: str
    """The refusal when it is not given, a template filled from :class:`Names`."""


class Unset(enum.Enum):
    """A default that is not a value."""

    RESOLVED = "resolved"
    """load_settings works the value out from other settings when this one is not given."""


RESOLVED: Final = Unset.RESOLVED


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One setting: where it is read, its value when not given, how it is parsed, what it means."""

    key: str = ""
    """Its key in ``BROKER_CONFIG`` (top level, or in an ``[identities.NAME]`` table) and in the
    overrides load_settings takes from flags; on a field, empty means the field's name."""
    env: str | None
    """Its environment variable; ``None`` when only the file sets it."""
    parse: Parser
    """Turns a given value into the setting's value (``KEY = ""`` in the file gives ``""``)."""
    doc: str
    """What it means, for the README and ``serve --help`` (Markdown backticks allowed)."""
    default: object = RESOLVED
    """The value when it is not given (taken as it is, not parsed), or :class:`Needed`, or
    :data:`RESOLVED`; on a field, taken from the field's default."""
    shown: str | None = None
    """How the docs show the default, when not as the value itself (Markdown)."""
    flag: str | None = None
    """The ``serve`` flag that overrides it; a boolean setting's flag sets it to true."""
    aliases: tuple[str, ...] = ()
    """Older keys still read in the file, after ``key``."""
    upstream: bool = False
    """An upstream URL: ``http://`` beyond loopback needs ``BROKER_ALLOW_CLEARTEXT_UPSTREAM``."""
    core: bool | str = False
    """Handed to the credential core's ``IdentitySpec``: under its own key (``True``), or under the
    field name given."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """A setting no longer accepted: given at all, it stops start-up with ``message``."""

    key: str
    """Its key in ``BROKER_CONFIG``."""
    env: str | None
    """Its environment variable."""
    message: str
    """Why, and what to set instead: a template filled from :class:`Names`."""


@dataclass(frozen=True, slots=True)
class Names:
    """How messages name settings: ``names["KEY"]``, and ``names["where"]`` for the table itself.

    A setting of an ``[identities.NAME]`` table is ``identities.NAME.KEY``; the identity that
    environment variables describe names each setting by its variable (``variables``).
    """

    where: str
    """``identities.NAME``, or ``BROKER`` for the environment's identity."""
    variables: Mapping[str, str] | None = None
    """Key -> environment variable, when the settings come from the environment."""

    def __getitem__(self, key: str) -> str:
        """How a message names setting ``key`` (``where``: the table)."""
        if key == "where":
            return self.where
        if self.variables is not None and key in self.variables:
            return self.variables[key]
        return f"{self.where}.{key}"


@dataclass(frozen=True, slots=True)
class _Choice:
    selector: Setting
    choices: Mapping[Any, type[Any]]


@dataclass(frozen=True, slots=True)
class _Group:
    cls: type[Any]
    rows: Mapping[str, Setting]


def row(
    *,
    env: str | None,
    parse: Parser,
    doc: str,
    key: str = "",
    needed: str | None = None,
    shown: str | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    upstream: bool = False,
    core: bool | str = False,
) -> dict[str, Setting]:
    """The ``metadata`` of a dataclass field that is one setting (see :class:`Setting`).

    Its key is the field's name unless ``key`` is given, its default the field's default. A field
    without a default is :data:`RESOLVED`, or when ``needed`` is given, :class:`Needed` with that
    message.
    """
    default = RESOLVED if needed is None else Needed(needed)
    return {
        _META: Setting(
            key=key,
            env=env,
            parse=parse,
            doc=doc,
            default=default,
            shown=shown,
            flag=flag,
            aliases=aliases,
            upstream=upstream,
            core=core,
        )
    }


def choice(
    *,
    env: str | None,
    parse: Parser,
    choices: Mapping[Any, type[Any]],
    doc: str,
    key: str = "",
    core: bool | str = False,
) -> dict[str, _Choice]:
    """The ``metadata`` of a dataclass field holding an instance of one of ``choices``.

    The other arguments declare the setting that chooses, as with :func:`row`; its parsed value
    picks the class, whose own fields are settings read from the same table. Its default is the
    choice of the field default's class.
    """
    selector = Setting(key=key, env=env, parse=parse, doc=doc, core=core)
    return {_META: _Choice(selector, choices)}


def group(cls: type[Any], rows: Mapping[str, Setting]) -> dict[str, _Group]:
    """The ``metadata`` of a dataclass field holding a ``cls`` (or ``None``) built from ``rows``.

    ``rows`` maps a field name of ``cls`` to its setting; a row's default is that attribute of the
    field's default (``None`` when the field's default is ``None``).
    """
    return {_META: _Group(cls, rows)}


_Declaration = Setting | _Choice | _Group
_DECLARED: dict[type[Any], tuple[tuple[str, _Declaration], ...]] = {}


def _declared(cls: type[Any]) -> tuple[tuple[str, _Declaration], ...]:
    """(field name, declaration) of each field of ``cls`` that holds settings, keys and defaults
    filled in from the field."""
    if cls in _DECLARED:
        return _DECLARED[cls]
    found: list[tuple[str, _Declaration]] = []
    for each in fields(cls):
        declared = each.metadata.get(_META)
        default = each.default
        if isinstance(declared, Setting):
            if default is not MISSING:
                declared = replace(declared, default=default)
            found.append((each.name, replace(declared, key=declared.key or each.name)))
        elif isinstance(declared, _Choice):
            chosen = next(k for k, c in declared.choices.items() if type(default) is c)
            selector = replace(declared.selector, key=declared.selector.key or each.name)
            found.append((each.name, _Choice(replace(selector, default=chosen), declared.choices)))
        elif isinstance(declared, _Group):
            rows = {
                attribute: replace(
                    setting, default=None if default is None else getattr(default, attribute)
                )
                for attribute, setting in declared.rows.items()
            }
            found.append((each.name, _Group(declared.cls, rows)))
    _DECLARED[cls] = tuple(found)
    return _DECLARED[cls]


def rows_of(cls: type[Any]) -> tuple[Setting, ...]:
    """Every setting of ``cls`` in declaration order, the classes of its choices and groups included."""
    rows: list[Setting] = []
    for _, declared in _declared(cls):
        if isinstance(declared, Setting):
            rows.append(declared)
        elif isinstance(declared, _Choice):
            rows.append(declared.selector)
            for chosen in dict.fromkeys(declared.choices.values()):
                rows.extend(rows_of(chosen))
        else:
            rows.extend(declared.rows.values())
    return tuple(rows)


def field_values(obj: object) -> Iterator[tuple[Setting, object]]:
    """(row, value) of each setting ``obj`` holds, through its choices and groups.

    A choosing setting comes with the choice that picked the class held.
    """
    for name, declared in _declared(type(obj)):
        value = getattr(obj, name)
        if isinstance(declared, Setting):
            yield declared, value
        elif isinstance(declared, _Choice):
            chosen = next(k for k, cls in declared.choices.items() if type(value) is cls)
            yield declared.selector, chosen
            yield from field_values(value)
        else:
            for attribute, setting in declared.rows.items():
                yield setting, None if value is None else getattr(value, attribute)


def parse_rows(
    rows: Iterable[Setting], given: Mapping[str, Any], label: Callable[[Setting], str]
) -> dict[str, Any]:
    """Each row's value by key: parsed from ``given`` (its key, then its aliases), else its default.

    A :class:`Needed` or :data:`RESOLVED` row that is not given is ``None`` here; :func:`build`
    refuses the first and load_settings works out the second. ``label`` names a row in messages.
    """
    values: dict[str, Any] = {}
    for setting in rows:
        keys = (setting.key, *setting.aliases)
        raw = next((given[k] for k in keys if given.get(k) is not None), None)
        if raw is not None:
            values[setting.key] = setting.parse(label(setting), raw)
        elif isinstance(setting.default, Needed | Unset):
            values[setting.key] = None
        else:
            values[setting.key] = setting.default
    return values


def build(cls: type[T], values: Mapping[str, Any], names: Names, /, **given: Any) -> T:
    """A ``cls`` from parsed ``values``; ``given`` fills the fields that are not settings or that
    load_settings worked out.

    Raises:
        ConfigError: a :class:`Needed` setting of the chosen variant is not given.
    """
    kwargs: dict[str, Any] = {}
    for name, declared in _declared(cls):
        if name in given:
            continue
        if isinstance(declared, Setting):
            value = values[declared.key]
            if value is None and isinstance(declared.default, Needed):
                raise ConfigError(declared.default.message.format_map(names))
            kwargs[name] = value
        elif isinstance(declared, _Choice):
            kwargs[name] = build(declared.choices[values[declared.selector.key]], values, names)
        else:
            kwargs[name] = declared.cls(
                **{attribute: values[s.key] for attribute, s in declared.rows.items()}
            )
    return cls(**kwargs, **given)

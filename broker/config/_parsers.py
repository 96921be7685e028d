"""Value parsers of the settings table: ``(how messages name the setting, the value) -> value``.

A value comes as a string from the environment and from flags, and as a TOML value from
``BROKER_CONFIG``; each parser accepts both and raises :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from broker.core.protocol.urls import host_of, is_loopback_host
from broker.errors import ConfigError, UrlError

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

# The control plane's skew window; an assertion must expire well inside it (protocol §12).
SKEW_WINDOW_SECONDS: Final = 300.0
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_REDIS_SCHEMES: Final = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


def optional(parse: Callable[[str, object], T]) -> Callable[[str, object], T | None]:
    """``parse``, with an empty value (``KEY = ""``) meaning unset."""

    def parse_optional(setting: str, value: object) -> T | None:
        return parse(setting, value) if value else None

    return parse_optional


def one_of(kind: type[E]) -> Callable[[str, object], E]:
    """One of the values of the enum ``kind``."""

    def parse_choice(setting: str, value: object) -> E:
        text = str(value)
        try:
            return kind(text)
        except ValueError:
            choices = ", ".join(str(member.value) for member in kind)
            raise ConfigError(f"{setting}: expected one of {choices}, got {text!r}") from None

    return parse_choice


def text(setting: str, value: object) -> str:
    """The value as a string, as given."""
    return str(value)


def stripped(setting: str, value: object) -> str | None:
    """The value without surrounding blanks; blank means unset."""
    return str(value).strip() or None


def boolean(setting: str, value: object) -> bool:
    """``true``/``false`` (or ``1``, ``yes``, ``on`` and their opposites); TOML booleans as they are."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{setting}: expected true or false, got {value!r}")


def seconds(setting: str, value: object, *, minimum: float = 0.0) -> float:
    """A finite number of seconds above ``minimum``; a trailing ``s`` is allowed."""
    try:
        number = float(str(value).strip().removesuffix("s"))
    except ValueError as exc:
        raise ConfigError(f"{setting}: expected a number of seconds, got {value!r}") from exc
    if not number > minimum or number != number or number == float("inf"):
        raise ConfigError(f"{setting}: must be a finite number greater than {minimum:g}")
    return number


def count(setting: str, value: object, *, minimum: int) -> int:
    """A whole number, at least ``minimum``."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{setting}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{setting}: must be at least {minimum}, got {number}")
    return number


def at_least_zero(setting: str, value: object) -> int:
    """A whole number, 0 or more."""
    return count(setting, value, minimum=0)


def at_least_one(setting: str, value: object) -> int:
    """A whole number, 1 or more."""
    return count(setting, value, minimum=1)


def whole_seconds(setting: str, value: object) -> int:
    """A number above 0, truncated to a whole number."""
    return int(seconds(setting, value))


def rate(setting: str, value: object) -> float:
    """A rate per second; 0 switches the limit off."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{setting}: expected a number per second, got {value!r}") from None
    if not 0 <= number < float("inf"):
        raise ConfigError(f"{setting}: must be a finite number, 0 or more (0 switches it off)")
    return number


def listen(setting: str, value: object) -> str:
    """``HOST:PORT``."""
    address = str(value)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {address!r}")
    return address


def ops_listen(setting: str, value: object) -> str | None:
    """``HOST:PORT``, or a bare PORT meaning loopback: the ops listener goes wider only when named."""
    address = str(value or "").strip()
    if not address:
        return None
    if address.isdigit():
        address = f"127.0.0.1:{address}"
    return listen(setting, address)


def url(setting: str, value: object) -> str:
    """An http(s) URL, without a trailing slash."""
    address = str(value)
    try:
        host_of(address)
    except UrlError as exc:
        raise ConfigError(f"{setting}: {exc.message}") from exc
    return address.rstrip("/")


def redis_url(setting: str, value: object) -> str | None:
    """A Redis URL of a scheme the store connects to; blank means the embedded store."""
    address = str(value or "").strip()
    if not address:
        return None
    if not address.startswith(_REDIS_SCHEMES):
        raise ConfigError(
            f"{setting}: expected a redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL"
        )
    return address


def hosts(setting: str, value: object) -> tuple[str, ...]:
    """Host names: a comma-separated string or a list, lower-cased."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{setting}: expected a list of host names")
    names = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for name in names:
        if "/" in name or ":" in name or " " in name:
            raise ConfigError(f"{setting}: {name!r} is not a host name")
    return names


def existing_file(setting: str, value: object) -> Path:
    """The path of a file that exists (``~`` expanded)."""
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{setting}: file {str(path)!r} does not exist")
    return path


def assertion_ttl(setting: str, value: object) -> float:
    """Seconds an assertion is valid: at least 2, and below the control plane's skew window."""
    ttl = seconds(setting, value)
    if ttl >= SKEW_WINDOW_SECONDS:
        raise ConfigError(
            f"{setting}: {ttl:g}s is at or above the control plane's "
            f"{SKEW_WINDOW_SECONDS:g}s skew window; use a shorter TTL"
        )
    if ttl < 2:
        raise ConfigError(f"{setting}: must be at least 2 seconds")
    return ttl


def seconds_or_never(setting: str, value: object) -> float | None:
    """Seconds, or ``0``/``none``/``never`` for no limit (``None``)."""
    if str(value).strip().lower() in ("0", "none", "never"):
        return None
    return seconds(setting, value)


def log_level(setting: str, value: object) -> str:
    """A logging level name, lower-cased."""
    level = str(value).lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"{setting}: expected debug, info, warning or error, got {level!r}")
    return level


def workers(setting: str, value: object) -> int | None:
    """A number of worker processes, or ``auto`` (``None``: load_settings chooses)."""
    if str(value).strip().lower() in ("", "auto"):
        return None
    return count(setting, value, minimum=1)


def account_kind(setting: str, value: object) -> str:
    """``token_file`` or ``login``."""
    kind = str(value)
    if kind not in ("token_file", "login"):
        raise ConfigError(f"{setting}: expected token_file or login, got {kind!r}")
    return kind


def is_loopback(address: str) -> bool:
    """Whether a HOST:PORT listen address is on the loopback interface only."""
    return is_loopback_host(address.rpartition(":")[0])

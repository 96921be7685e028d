"""Protocol timestamps: RFC 3339, UTC, whole seconds, ``Z`` (protocol §5.1, §6.1)."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.errors import ProtocolError


def format_timestamp(moment: datetime) -> str:
    """Render ``moment`` as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC, dropping fractions (§5.1).

    Raises:
        ProtocolError: ``moment`` is naive (has no time zone).
    """
    if moment.tzinfo is None:
        raise ProtocolError("protocol timestamps need an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; fractional seconds and offsets are accepted (§5.1, §12.2).

    Raises:
        ProtocolError: not an RFC 3339 date-time with a time zone.
    """
    if len(text) > 64 or "T" not in text.upper():
        raise ProtocolError("timestamp is not an RFC 3339 date-time")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProtocolError("timestamp is not an RFC 3339 date-time") from exc
    if parsed.tzinfo is None:
        raise ProtocolError("timestamp has no time zone")
    return parsed.astimezone(UTC)

"""Secrets never print, and the redaction processor masks what slips through."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import structlog

from broker.core.protocol.keys import AgentKey
from broker.logs import REDACTED, configure_logging, redact_secrets
from broker.secret import Secret

TOKEN = "sk-very-secret-token-value"


class TestSecret:
    def test_never_printed(self) -> None:
        """repr, str and format all mask the value."""
        secret = Secret(TOKEN)
        for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", str([secret])):
            assert TOKEN not in text

    def test_reveal(self) -> None:
        """The value is reachable only through reveal()."""
        assert Secret(TOKEN).reveal() == TOKEN

    def test_not_picklable(self) -> None:
        """Pickling, a way out of the process, is refused."""
        with pytest.raises(TypeError):
            pickle.dumps(Secret(TOKEN))


class TestRedaction:
    def test_secret_named_fields(self) -> None:
        """Fields with secret-sounding names are masked whatever their value."""
        event = redact_secrets(None, "info", {"event": "x", "access_token": "abc", "kek": "k"})
        assert event["access_token"] == REDACTED
        assert event["kek"] == REDACTED

    def test_secret_looking_text(self) -> None:
        """Assertion, Bearer and PKCS#8 text inside ordinary fields is masked."""
        key = AgentKey.from_seed(bytes([7]) * 32).to_pkcs8_base64()
        event = redact_secrets(
            None,
            "info",
            {
                "event": "x",
                "detail": f"got Bearer {TOKEN} and AgentAssertion eyJhYmMiOiAiZGVmIn0 and {key}",
                "nested": {"inner": [f"Bearer {TOKEN}"]},
            },
        )
        rendered = json.dumps(event)
        assert TOKEN not in rendered
        assert key not in rendered
        assert "eyJhYmMiOiAiZGVmIn0" not in rendered

    def test_public_key_kept(self) -> None:
        """The public key is a public fact and stays readable."""
        ssh = AgentKey.from_seed(bytes([7]) * 32).public_key_ssh
        event = redact_secrets(None, "info", {"event": "x", "public_key_ssh": ssh})
        assert event["public_key_ssh"] == ssh

    def test_json_lines(self) -> None:
        """configure_logging writes one JSON object per line with the event name."""
        stream = io.StringIO()
        configure_logging("info", stream)
        structlog.get_logger().info("broker.started", secret_value=Secret(TOKEN))
        line = json.loads(stream.getvalue().strip())
        assert line["event"] == "broker.started"
        assert line["level"] == "info"
        assert TOKEN not in stream.getvalue()

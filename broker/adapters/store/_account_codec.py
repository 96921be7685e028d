"""Login records <-> Redis HASH fields: the three tokens sealed together, public facts in clear
and bound into the seal (see :func:`~broker.adapters.store._codec.sealed_associated_data`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from broker.adapters.store._codec import (
    _open,
    _text,
    _timestamp,
    iso,
    seal_bound,
    sealed_associated_data,
)
from broker.core.credentials.model import AccountRecord, AccountState
from broker.core.credentials.ports import Sealer
from broker.core.protocol.login import tokens_from
from broker.errors import LoginFormatError, StoreCorrupt

TOKENS_FIELD: Final = "tokens"


def encode_account(record: AccountRecord, key: str, sealer: Sealer) -> dict[str, bytes]:
    """The HASH fields of a login; the tokens are sealed to ``key`` and the field name."""
    tokens = json.dumps(
        {
            "access_token": record.tokens.access_token.reveal(),
            "refresh_token": record.tokens.refresh_token.reveal(),
            "id_token": record.tokens.id_token.reveal(),
        },
        separators=(",", ":"),
    ).encode()
    plain = {
        "account_id": record.tokens.account_id.encode(),
        "user_id": (record.tokens.user_id or "").encode(),
        "access_expires_at": iso(record.tokens.access_expires_at, "access_expires_at").encode(),
        "last_refresh": iso(record.last_refresh, "last_refresh").encode(),
        "state": record.state.value.encode(),
        "burned_refresh": (record.burned_refresh or "").encode(),
        "version": str(record.version).encode(),
        "detail": record.detail.encode(),
    }
    return seal_bound(plain, TOKENS_FIELD, tokens, key, sealer)


def decode_account(
    identity: str, fields: Mapping[str, bytes], key: str, sealer: Sealer
) -> AccountRecord:
    """Rebuild a login from its fields.

    Raises:
        StoreCorrupt: a field is missing or malformed, or the tokens do not open.
    """
    sealed = fields.get(TOKENS_FIELD)
    if sealed is None:
        raise StoreCorrupt("field 'tokens' is missing")
    plain = _open(sealer, sealed, sealed_associated_data(key, TOKENS_FIELD, fields), TOKENS_FIELD)
    try:
        tokens = json.loads(plain)
        login = tokens_from(tokens["access_token"], tokens["refresh_token"], tokens["id_token"])
    except (ValueError, KeyError, TypeError, LoginFormatError):
        raise StoreCorrupt("sealed login tokens are malformed") from None
    try:
        state = AccountState(_text(fields, "state"))
        version = int(_text(fields, "version"))
    except ValueError:
        raise StoreCorrupt("field 'state' or 'version' is malformed") from None
    return AccountRecord(
        identity=identity,
        tokens=login,
        last_refresh=_timestamp(_text(fields, "last_refresh"), "last_refresh"),
        state=state,
        burned_refresh=_text(fields, "burned_refresh") or None,
        version=version,
        detail=_text(fields, "detail"),
    )

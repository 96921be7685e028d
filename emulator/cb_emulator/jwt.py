"""Agent Identity JWTs and the JWK Set that verifies them, as a control plane would issue them (§10).

The emulator plays the orchestrator that mints Agent Identity JWTs (§10.4, not discoverable from the
reference, so this is our choice) and the backend that publishes the JWKS (§10.3). A token is a JWS
in compact serialisation (RFC 7515 §7.1) signed with RS256 (RSASSA-PKCS1-v1_5 over SHA-256, RFC 7518
§3.3): ``base64url(header) "." base64url(claims) "." base64url(signature)``, each part unpadded, the
signature over the ASCII of the first two parts. The emulator builds it directly on ``cryptography``
so that the broker's verifier (a JOSE library) is checked against an independent implementation.

:class:`SigningKeySet` holds the RSA keys, each with a ``kid``: one signs, the published ones form the
JWK Set, and rotation adds a key and may retire the previous one (§10.2). :class:`JwtSpec` describes
one token, including deliberately bad ones (expired, wrong ``iss``/``aud``, unknown ``kid``, a
signature by an unpublished key, another ``alg``), and :func:`mint_agent_identity_jwt` registers a
fresh Ed25519 identity in the emulator's state and returns the token carrying its private key (§10.1).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from broker.core.protocol.keys import AgentKey
from cb_emulator.model import EmulatorAccount
from cb_emulator.state import EmulatorState

ALGORITHM: Final = "RS256"
DEFAULT_ISSUER: Final = "https://chatgpt.com/codex-backend/agent-identity"
DEFAULT_AUDIENCE: Final = "codex-app-server"
RSA_KEY_BITS: Final = 2048
_RSA_PUBLIC_EXPONENT: Final = 65537


def b64url(data: bytes) -> str:
    """Unpadded base64url, as every JWS part is encoded (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    # JWK integers are big-endian, minimal length, unpadded base64url (RFC 7518 §6.3.1).
    return b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)


@dataclass(slots=True)
class _SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    published: bool = True

    def jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }


class SigningKeySet:
    """The emulator's RSA signing keys (§10.2, §10.3).

    The first key is made on first use (RSA generation costs tens of milliseconds, and most
    emulators never mint a JWT). Retired keys stay known to the emulator, so a token can still be
    signed with one, but leave the published JWK Set.
    """

    def __init__(self) -> None:
        self._keys: dict[str, _SigningKey] = {}
        self._current: str | None = None
        self._foreign: rsa.RSAPrivateKey | None = None

    @property
    def current_kid(self) -> str:
        """The ``kid`` of the key that signs new tokens."""
        if self._current is None:
            return self.rotate()
        return self._current

    def published_kids(self) -> list[str]:
        """The ``kid`` of every key in the JWK Set, oldest first."""
        _ = self.current_kid
        return [key.kid for key in self._keys.values() if key.published]

    def rotate(self, *, retire_old: bool = False) -> str:
        """Add a new key and make it the signing key; return its ``kid``.

        Args:
            retire_old: also take the previous signing key out of the JWK Set.
        """
        previous = self._current
        kid = "emu-" + secrets.token_hex(8)
        self._keys[kid] = _SigningKey(kid, _new_rsa_key())
        self._current = kid
        if retire_old and previous is not None:
            self._keys[previous].published = False
        return kid

    def retire(self, kid: str) -> None:
        """Take a key out of the JWK Set (tokens naming it then have an unknown ``kid``).

        Raises:
            KeyError: no published key has this ``kid``.
            ValueError: the key is the current signing key (rotate first).
        """
        key = self._keys.get(kid)
        if key is None or not key.published:
            raise KeyError(kid)
        if kid == self._current:
            raise ValueError("the current signing key cannot be retired; rotate first")
        key.published = False

    def jwks(self) -> dict[str, object]:
        """The public JWK Set: ``{"keys": [{kty, kid, use, alg, n, e}, …]}`` (§10.3)."""
        _ = self.current_kid
        return {"keys": [key.jwk() for key in self._keys.values() if key.published]}

    def sign(
        self,
        claims: Mapping[str, object],
        *,
        kid: str | None = None,
        foreign_key: bool = False,
        alg: str = ALGORITHM,
    ) -> str:
        """Sign ``claims`` as an RS256 JWS in compact serialisation.

        Args:
            claims: the payload (JSON-serialisable).
            kid: the header's ``kid``: a key the emulator holds signs with that key (a retired one
                makes a token whose ``kid`` is not in the JWK Set); any other value is signed with a
                key never published. Default: the current signing key.
            foreign_key: sign with a key never published while the header names ``kid`` (default
                the current one), so the signature does not verify with the published key.
            alg: the header's ``alg``; the signature is RS256 whatever it says.
        """
        header_kid = self.current_kid if kid is None else kid
        known = self._keys.get(header_kid)
        signer = known.private_key if known is not None and not foreign_key else self._foreign_key()
        header = {"alg": alg, "kid": header_kid, "typ": "JWT"}
        signing_input = f"{_json_part(header)}.{_json_part(claims)}".encode("ascii")
        signature = signer.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"

    def _foreign_key(self) -> rsa.RSAPrivateKey:
        if self._foreign is None:
            self._foreign = _new_rsa_key()
        return self._foreign


def _json_part(value: Mapping[str, object]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSpec:
    """What to put in one Agent Identity JWT (claims of §10.1), and how to spoil it for tests.

    Attributes:
        account_id: ``account_id``, the account the identity is bound to.
        user_id: ``chatgpt_user_id``.
        email: ``email`` (empty when none, §9.4).
        plan_type: ``plan_type``.
        fedramp: ``chatgpt_account_is_fedramp``; protected calls then need ``X-OpenAI-Fedramp``.
        lifetime_seconds: ``exp - iat``; negative makes a token that has already expired.
        iss: ``iss`` (the reference verifier requires the default, §10.2).
        aud: ``aud`` (the reference verifier requires the default, §10.2).
        kid: the header's ``kid`` (see :meth:`SigningKeySet.sign`).
        extra_claims: claims added last, replacing standard ones of the same name.
        omit_claims: claims removed from the payload (to test required claims).
        sign_with_unknown_key: sign with a key the JWK Set does not hold (a bad signature).
        alg: the header's ``alg`` (the signature is RS256 regardless).

    Raises:
        ValueError: ``account_id`` is empty, ``kid``/``alg`` are empty, or a claim is not JSON.
    """

    account_id: str
    user_id: str
    email: str = ""
    plan_type: str = "pro"
    fedramp: bool = False
    lifetime_seconds: int = 3600
    iss: str = DEFAULT_ISSUER
    aud: str = DEFAULT_AUDIENCE
    kid: str | None = None
    extra_claims: Mapping[str, object] = field(default_factory=dict)
    omit_claims: tuple[str, ...] = ()
    sign_with_unknown_key: bool = False
    alg: str = ALGORITHM

    def __post_init__(self) -> None:
        if not self.account_id:
            raise ValueError("account_id: must be a non-empty string")
        if self.kid is not None and not self.kid:
            raise ValueError("kid: must be a non-empty string or null")
        if not self.alg:
            raise ValueError("alg: must be a non-empty string")
        try:
            json.dumps(dict(self.extra_claims))
        except (TypeError, ValueError) as exc:
            raise ValueError("extra_claims: must be JSON-serialisable") from exc

    @classmethod
    def from_json(cls, data: object) -> JwtSpec:
        """Build a spec from the JSON body of ``POST /_emulator/jwt`` (same names as the fields).

        Raises:
            TypeError: not an object, or a member of the wrong type.
            ValueError: an unknown member, or a value out of range.
        """
        if not isinstance(data, Mapping):
            raise TypeError("the JWT request must be a JSON object")
        fields = {str(k): v for k, v in data.items()}
        unknown = sorted(set(fields) - _SPEC_MEMBERS)
        if unknown:
            raise ValueError(f"unknown member(s): {', '.join(unknown)}")
        kid = fields.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TypeError("kid: must be a string or null")
        extra = fields.get("extra_claims", {})
        if not isinstance(extra, dict):
            raise TypeError("extra_claims: must be an object")
        omit = fields.get("omit_claims", [])
        if not isinstance(omit, list) or not all(isinstance(name, str) for name in omit):
            raise TypeError("omit_claims: must be an array of strings")
        lifetime = fields.get("lifetime_seconds", 3600)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int):
            raise TypeError("lifetime_seconds: must be an integer")
        return cls(
            account_id=_str(fields, "account_id", None),
            user_id=_str(fields, "user_id", None),
            email=_str(fields, "email", ""),
            plan_type=_str(fields, "plan_type", "pro"),
            fedramp=_bool(fields, "fedramp"),
            lifetime_seconds=lifetime,
            iss=_str(fields, "iss", DEFAULT_ISSUER),
            aud=_str(fields, "aud", DEFAULT_AUDIENCE),
            kid=kid,
            extra_claims={str(k): v for k, v in extra.items()},
            omit_claims=tuple(str(name) for name in omit),
            sign_with_unknown_key=_bool(fields, "sign_with_unknown_key"),
            alg=_str(fields, "alg", ALGORITHM),
        )

    def claims(
        self, *, issued_at: int, agent_runtime_id: str, private_key: str
    ) -> dict[str, object]:
        """The payload: the claims of §10.1, then ``extra_claims``, less ``omit_claims``."""
        claims: dict[str, object] = {
            "iss": self.iss,
            "aud": self.aud,
            "iat": issued_at,
            "exp": issued_at + self.lifetime_seconds,
            "agent_runtime_id": agent_runtime_id,
            "agent_private_key": private_key,
            "account_id": self.account_id,
            "chatgpt_user_id": self.user_id,
            "email": self.email,
            "plan_type": self.plan_type,
            "chatgpt_account_is_fedramp": self.fedramp,
        }
        claims.update(self.extra_claims)
        for name in self.omit_claims:
            claims.pop(name, None)
        return claims


_SPEC_MEMBERS: Final = frozenset(
    {
        "account_id",
        "user_id",
        "email",
        "plan_type",
        "fedramp",
        "lifetime_seconds",
        "iss",
        "aud",
        "kid",
        "extra_claims",
        "omit_claims",
        "sign_with_unknown_key",
        "alg",
    }
)


def _str(fields: Mapping[str, object], name: str, default: str | None) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise TypeError(f"{name}: {'is required and ' if default is None else ''}must be a string")
    return value


def _bool(fields: Mapping[str, object], name: str) -> bool:
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be a boolean")
    return value


@dataclass(frozen=True, slots=True)
class MintedJwt:
    """A minted token and the identity it carries.

    Attributes:
        jwt: the compact JWS. It carries the private key: a secret.
        agent_runtime_id: the identity registered for it.
        kid: the ``kid`` its header names.
    """

    jwt: str
    agent_runtime_id: str
    kid: str


def mint_agent_identity_jwt(state: EmulatorState, keys: SigningKeySet, spec: JwtSpec) -> MintedJwt:
    """Register a fresh Ed25519 identity for ``spec``'s account and return its JWT (§10.1, §10.4).

    The identity is registered as ``registered_via="jwt"`` (not counted as an identity
    registration) so that assertions signed with the token's ``agent_private_key`` verify at
    ``/protected``, and tasks can be registered for it at the AuthAPI. ``iat`` is the emulator
    clock, in whole seconds.
    """
    key = AgentKey.generate(os.urandom(64))
    account = EmulatorAccount(spec.account_id, spec.user_id, fedramp=spec.fedramp)
    runtime_id = state.add_identity(
        key.public_key_bytes,
        account,
        authorised_by="jwt",
        capabilities=(),
        fedramp_header=False,
        registered_via="jwt",
    )
    claims = spec.claims(
        issued_at=int(state.now().timestamp()),
        agent_runtime_id=runtime_id,
        private_key=key.to_pkcs8_base64(),
    )
    kid = keys.current_kid if spec.kid is None else spec.kid
    token = keys.sign(claims, kid=kid, foreign_key=spec.sign_with_unknown_key, alg=spec.alg)
    state.count("jwts_minted")
    return MintedJwt(token, runtime_id, kid)

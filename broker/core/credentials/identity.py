"""Establishing an agent identity: load and validate, or register once for the fleet (§4, §9)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from broker.core.credentials.model import IdentityRecord
from broker.core.credentials.ports import Clock, Store
from broker.core.credentials.singleflight import SingleFlight, fleet_once
from broker.core.credentials.spec import IdentityRuntime, Profile, Source, binding
from broker.core.credentials.waiting import poll_until
from broker.core.protocol.keys import AgentKey
from broker.errors import IdentityUnusable, NoBearerToken, SingleFlightTimeout
from broker.events import Event

log = structlog.get_logger("broker.identity")

REGISTRATION_LOCK = "identity"


class IdentityManager:
    """Gives the current, validated identity record of each configured identity.

    A record is cached in process after it is loaded or registered; :meth:`forget` drops it (rotation,
    invalidation). Registration happens at most once fleet-wide (see ``singleflight``).
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        random_bytes: Callable[[int], bytes],
        lock_ttl: float,
        wait_deadline: float,
    ) -> None:
        """Args:
        store: shared state.
        clock: injected time.
        random_bytes: CSPRNG (``os.urandom`` in production) for new keys.
        lock_ttl: registration lock lifetime (longer than one registration's deadline).
        wait_deadline: how long a caller waits for another replica's registration.
        """
        self._store = store
        self._clock = clock
        self._random_bytes = random_bytes
        self._lock_ttl = lock_ttl
        self._wait_deadline = wait_deadline
        self._cache: dict[str, IdentityRecord] = {}
        self._flights: SingleFlight[str, IdentityRecord] = SingleFlight()

    def cached(self, name: str) -> IdentityRecord | None:
        """The in-process record, if any (no I/O)."""
        return self._cache.get(name)

    def forget(self, name: str) -> None:
        """Drop the in-process record so the next use reloads it."""
        self._cache.pop(name, None)

    async def _from_source(self, runtime: IdentityRuntime) -> IdentityRecord:
        """A JWT or imported identity: loaded (re-read when its file changes), checked, cached."""
        assert runtime.source is not None  # noqa: S101  (callers check)
        spec = runtime.spec
        record = await runtime.source.load()
        problem = self._validation_problem(await binding(runtime), runtime, record)
        if problem is not None:
            raise IdentityUnusable(
                f"identity {spec.name!r} from its {spec.source.value} source fails validation: "
                f"{problem} (§9.3)"
            )
        cached = self._cache.get(spec.name)
        if (
            cached is None
            or cached.agent_runtime_id != record.agent_runtime_id
            or cached.key != record.key
        ):
            self._cache[spec.name] = record
            log.info(
                Event.IDENTITY_LOADED,
                identity=spec.name,
                agent_runtime_id=record.agent_runtime_id,
                binding_id=record.binding_id,
                source=record.source,
            )
        return self._cache[spec.name]

    async def peek(self, runtime: IdentityRuntime) -> IdentityRecord | None:
        """The stored identity if it is valid, without registering one."""
        if runtime.source is not None:
            try:
                return await self._from_source(runtime)
            except IdentityUnusable:
                return None
        cached = self._cache.get(runtime.spec.name)
        if cached is not None:
            return cached
        return await self._load_valid(runtime)

    async def current(self, runtime: IdentityRuntime) -> IdentityRecord:
        """The identity's record: cached, loaded and validated, or registered now (§9.3, §4).

        Raises:
            IdentityUnusable: no account binding to register under.
            NoBearerToken: registration needs the account's token and there is none.
            ControlPlaneError: registration failed (ControlPlaneUnavailable when retryable).
            StoreUnavailable: the store cannot be reached.
        """
        if runtime.source is not None:
            return await self._from_source(runtime)
        cached = self._cache.get(runtime.spec.name)
        if cached is not None:
            return cached

        async def establish() -> IdentityRecord:
            record = await fleet_once(
                store=self._store,
                clock=self._clock,
                identity=runtime.spec.name,
                lock_name=REGISTRATION_LOCK,
                lock_ttl=self._lock_ttl,
                wait_deadline=self._wait_deadline,
                lookup=lambda: self._load_valid(runtime),
                produce=lambda: self._register(runtime),
            )
            self._cache[runtime.spec.name] = record
            return record

        return await self._flights.do(runtime.spec.name, establish)

    async def reconcile(self, runtime: IdentityRuntime, record: IdentityRecord) -> IdentityRecord:
        """Make the store agree with this replica before registering a task under ``record``.

        If the store lost the identity (Redis restarted empty), write it back so replicas started
        later reuse it instead of registering another; if the store holds a newer identity
        (rotated or re-registered elsewhere), adopt that one.
        """
        if runtime.source is not None:
            return record
        stored = await self._store.load_identity(runtime.spec.name)
        if stored is None:
            token = await self._store.acquire_lock(
                runtime.spec.name, REGISTRATION_LOCK, self._lock_ttl
            )
            if token is None:
                return record
            try:
                if await self._store.load_identity(runtime.spec.name) is None:
                    await self._store.save_identity(record)
                    log.warning(
                        Event.IDENTITY_RESTORED,
                        identity=runtime.spec.name,
                        agent_runtime_id=record.agent_runtime_id,
                    )
            finally:
                await self._store.release_lock(runtime.spec.name, REGISTRATION_LOCK, token)
            return record
        if stored.agent_runtime_id != record.agent_runtime_id:
            adopted = await self._load_valid(runtime)
            if adopted is not None:
                self._cache[runtime.spec.name] = adopted
                return adopted
        return record

    async def rotate(self, runtime: IdentityRuntime) -> tuple[IdentityRecord, str | None]:
        """Replace the identity with a newly generated and registered key, under the fleet lock.

        A JWT or imported identity is rotated by replacing its file instead (IdentityUnusable).

        Returns:
            The new record and the previous runtime id (``None`` if there was none).

        Raises:
            SingleFlightTimeout: another replica held the registration lock too long.
            ControlPlaneError, NoBearerToken, IdentityUnusable: registration failed; the old
                identity stays in place.
        """
        name = runtime.spec.name
        if runtime.source is not None:
            raise IdentityUnusable(
                f"identity {name!r} comes from its {runtime.spec.source.value} source; rotate it "
                "by replacing that file"
            )
        token = await poll_until(
            self._clock,
            lambda: self._store.acquire_lock(name, REGISTRATION_LOCK, self._lock_ttl),
            deadline=self._wait_deadline,
        )
        if token is None:
            raise SingleFlightTimeout(
                f"identity {name!r} is being registered elsewhere; rotation did not start"
            )
        try:
            previous = await self._store.load_identity(name)
            record = await self._register(runtime)
        finally:
            await self._store.release_lock(name, REGISTRATION_LOCK, token)
        self._cache[name] = record
        log.warning(
            Event.IDENTITY_ROTATED,
            identity=name,
            agent_runtime_id=record.agent_runtime_id,
            previous_agent_runtime_id=previous.agent_runtime_id if previous else None,
        )
        return record, previous.agent_runtime_id if previous else None

    async def _load_valid(self, runtime: IdentityRuntime) -> IdentityRecord | None:
        spec = runtime.spec
        record = await self._store.load_identity(spec.name)
        if record is None:
            return None
        problem = self._validation_problem(await binding(runtime), runtime, record)
        if problem is None:
            log.info(
                Event.IDENTITY_LOADED,
                identity=spec.name,
                agent_runtime_id=record.agent_runtime_id,
                binding_id=record.binding_id,
            )
            return record
        log.warning(
            Event.IDENTITY_DISCARDED,
            identity=spec.name,
            agent_runtime_id=record.agent_runtime_id,
            reason=problem,
        )
        await self._store.delete_identity(spec.name)
        return None

    @staticmethod
    def _validation_problem(
        bound: tuple[str | None, str | None], runtime: IdentityRuntime, record: IdentityRecord
    ) -> str | None:
        """The §9.3 checks against the current binding; the key was parsed by the store (rule 2)."""
        spec = runtime.spec
        account_id, user_id = bound
        if account_id and record.account_id != account_id:
            return "workspace_mismatch"
        if user_id and record.user_id != user_id:
            return "user_mismatch"
        if spec.source is not Source.JWT and record.name != spec.name:
            return "name_mismatch"
        return None

    async def _register(self, runtime: IdentityRuntime) -> IdentityRecord:
        spec = runtime.spec
        account_id, user_id = await binding(runtime)
        if not account_id:
            raise IdentityUnusable(
                f"identity {spec.name!r} has no ChatGPT account binding (set its account_id)"
            )
        bearer = await runtime.bearer.token()
        if not bearer:
            raise NoBearerToken(
                f"identity {spec.name!r} cannot register: the account's bearer token is missing"
            )
        key = AgentKey.generate(self._random_bytes(64))
        abom = dict(spec.abom)
        runtime_id = await runtime.control_plane.register_identity(
            bearer=bearer, agent_public_key=key.public_key_ssh, abom=abom
        )
        record = IdentityRecord(
            name=spec.name,
            agent_runtime_id=runtime_id,
            key=key,
            account_id=account_id,
            user_id=user_id,
            registered_at=self._clock.now().replace(microsecond=0),
            source="register",
        )
        await self._store.save_identity(record)
        log.info(
            Event.IDENTITY_REGISTERED,
            identity=spec.name,
            agent_runtime_id=runtime_id,
            binding_id=record.binding_id,
            profile=spec.profile.value,
            public_key_ssh=key.public_key_ssh,
        )
        return record


__all__ = ["REGISTRATION_LOCK", "IdentityManager", "Profile"]

"""The catalogue's entries: one :class:`~broker.events.EventSpec` per :class:`~broker.events.Event`.

Fields shared by several events are defined once in ``_fields``, so an ``identity`` or a ``task_id``
means the same thing everywhere. Edit this table when an event gains or changes a field, then
regenerate the docs page (``python -m broker.catalog --write``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from broker.catalog._fields import (
    ACCOUNT_ID,
    BOOL,
    DETAIL,
    DURATION_MS,
    ERROR,
    EXCEPTION,
    HTTP_STATUS,
    IDENTITY,
    INT,
    NUM,
    REASON,
    REDIS,
    RUNTIME,
    STATS,
    STR,
    TASK_ID,
    TASK_KIND,
    THREAD_ID,
)
from broker.events import Event, EventSpec, FieldSpec, FieldType, Level

_WORKER: Final = FieldSpec("worker", INT, "the worker's index, 0 to BROKER_WORKERS - 1")
_WORKER_PID: Final = FieldSpec("pid", INT, "the worker's process id")
_EXIT_CODE: Final = FieldSpec(
    "exit_code", INT, "the worker's exit status; negative: killed by that signal (-9: SIGKILL)"
)

_SPECS: Final = (
    # life cycle
    EventSpec(
        Event.BROKER_STARTED,
        Level.INFO,
        "The broker listens and serves.",
        (
            FieldSpec("listen", STR, "host:port actually bound"),
            FieldSpec("version", STR, "the broker's version"),
            FieldSpec("store", STR, "'redis' (shared) or 'embedded' (this process only)"),
            FieldSpec(
                "identities", FieldType.STRINGS, "the configured identity names", identifier=True
            ),
            FieldSpec("pid", INT, "this process's id (tells a supervisor's workers apart)"),
            replace(
                _WORKER,
                description="this worker's index among the supervisor's workers (0 to "
                "BROKER_WORKERS - 1); only when BROKER_WORKERS is above 1",
                optional=True,
            ),
            FieldSpec(
                "ops_listen",
                STR,
                "host:port of the ops HTTP listener (/metrics, /healthz, /readyz), when configured",
                optional=True,
            ),
            FieldSpec("event_loop", STR, "'uvloop', or 'asyncio' where uvloop is not installed"),
            FieldSpec(
                "access_log_sample",
                INT,
                "BROKER_ACCESS_LOG_SAMPLE: one successful RPC in this many writes rpc.completed "
                "(0: none)",
            ),
        ),
    ),
    EventSpec(
        Event.BROKER_STOPPING,
        Level.INFO,
        "Shutdown began: health is NOT_SERVING, in-flight RPCs get the grace period.",
        (FieldSpec("grace_seconds", NUM, "seconds in-flight RPCs may still take"),),
    ),
    EventSpec(
        Event.BROKER_STOPPED,
        Level.INFO,
        "Shutdown finished; the final counters.",
        (
            *STATS,
            FieldSpec("pid", INT, "this process's id (tells a supervisor's workers apart)"),
            replace(
                _WORKER,
                description="this worker's index; only when BROKER_WORKERS is above 1",
                optional=True,
            ),
        ),
    ),
    EventSpec(
        Event.BROKER_STATS,
        Level.INFO,
        "Periodic cumulative counters (every BROKER_STATS_INTERVAL seconds, 10 by default); "
        "successful RPCs are counted here, not logged one by one.",
        (
            *STATS,
            FieldSpec("rpcs_interval", INT, "RPCs finished since the previous broker.stats line"),
            FieldSpec("interval_s", NUM, "seconds since the previous broker.stats line (or start)"),
        ),
    ),
    EventSpec(
        Event.CONFIG_INVALID,
        Level.ERROR,
        "The configuration is invalid; the process exits with status 2.",
        (FieldSpec("error", STR, "which setting is wrong and why"),),
    ),
    EventSpec(
        Event.PROCESS_HARDENED,
        Level.INFO,
        "`serve` turned core dumps off before reading any secret (RLIMIT_CORE 0, not dumpable).",
        (
            FieldSpec("core_dumps", BOOL, "whether a crash could still write a core file"),
            FieldSpec(
                "dumpable",
                BOOL,
                "whether the process is still dumpable (ptrace and /proc/PID/mem by its user)",
            ),
            replace(DETAIL, description="what could not be done", optional=True),
        ),
        other_levels={Level.WARNING: "a step failed or does not exist here; detail says which"},
    ),
    EventSpec(
        Event.SUPERVISOR_STARTED,
        Level.INFO,
        "`serve` with BROKER_WORKERS above 1: every worker serves the port; this process (which "
        "holds no credential and never opens the store) watches them.",
        (
            FieldSpec("listen", STR, "the host:port every worker serves"),
            FieldSpec("workers", INT, "how many workers"),
            FieldSpec("pid", INT, "the supervisor's process id"),
        ),
    ),
    EventSpec(
        Event.BACKGROUND_RESTARTED,
        Level.WARNING,
        "A background job of the process (invalidations, health, stats) failed or ended; it "
        "starts again after delay_s.",
        (
            FieldSpec("job", STR, "the job: invalidations, health or stats"),
            FieldSpec("outcome", STR, "'failed' (it raised) or 'ended' (it returned)"),
            FieldSpec("error_type", STR, "the exception's class when it failed", nullable=True),
            FieldSpec("delay_s", NUM, "seconds until it starts again (doubling, capped)"),
            EXCEPTION,
        ),
        other_levels={Level.ERROR: "an unexpected exception (a bug; with exception)"},
    ),
    EventSpec(
        Event.SUPERVISOR_WORKER_EXITED,
        Level.WARNING,
        "A worker exited while the broker was serving; another is started after restart_in_s.",
        (
            _WORKER,
            _WORKER_PID,
            _EXIT_CODE,
            FieldSpec("uptime_s", NUM, "how long that worker process ran"),
            FieldSpec(
                "restart_in_s",
                NUM,
                "the wait before the next start: 0.5 s, doubled by each quick exit up to 30 s, "
                "back to 0.5 s once a worker served for a minute",
            ),
        ),
    ),
    EventSpec(
        Event.SUPERVISOR_WORKER_FAILED,
        Level.ERROR,
        "A worker exited before it ever served (its reason is on stderr, e.g. a configuration "
        "error); the supervisor stops the others and exits with its status.",
        (_WORKER, _WORKER_PID, _EXIT_CODE),
    ),
    EventSpec(
        Event.SUPERVISOR_WORKER_KILLED,
        Level.WARNING,
        "A worker still ran 5 s after its grace period had passed; it was killed (SIGKILL).",
        (_WORKER, _WORKER_PID),
    ),
    EventSpec(
        Event.SUPERVISOR_STOPPING,
        Level.INFO,
        "The supervisor sends SIGTERM to every worker; each drains as a single broker does.",
        (
            replace(REASON, description="'SIGTERM', 'SIGINT', or 'worker_failed'"),
            FieldSpec("grace_seconds", NUM, "seconds each worker's in-flight RPCs may still take"),
        ),
    ),
    EventSpec(
        Event.SUPERVISOR_STOPPED,
        Level.INFO,
        "Every worker has stopped; the supervisor exits.",
        (
            FieldSpec(
                "exit_code",
                INT,
                "the supervisor's exit status: 0 when every worker drained, a failed worker's "
                "status, or 1",
            ),
        ),
    ),
    EventSpec(
        Event.FILE_EXPOSED,
        Level.WARNING,
        "A configured secret file (KEK, token, JWT, identity, login, TLS key) is open to group or "
        "others; written once per file at start.",
        (
            FieldSpec("setting", STR, "the setting that names the file"),
            FieldSpec("path", STR, "the file"),
            FieldSpec("mode", STR, "its permission bits, octal (e.g. 0644)"),
            DETAIL,
        ),
    ),
    # state
    EventSpec(
        Event.STORE_EMBEDDED,
        Level.WARNING,
        "No Redis configured: state lives in this process only.",
        (DETAIL,),
    ),
    EventSpec(Event.STORE_CONNECTED, Level.INFO, "Redis answered for the first time.", (REDIS,)),
    EventSpec(
        Event.STORE_DEGRADED,
        Level.WARNING,
        "Redis stopped answering (written once per outage).",
        (
            REDIS,
            FieldSpec("operation", STR, "the store operation that failed"),
            ERROR,
            EXCEPTION,
        ),
        other_levels={Level.ERROR: "the invalidation listener crashed (a bug; with exception)"},
    ),
    EventSpec(Event.STORE_RECOVERED, Level.INFO, "Redis answers again after an outage.", (REDIS,)),
    EventSpec(
        Event.STORE_CORRUPT_VALUE,
        Level.WARNING,
        "A stored value or message could not be opened or parsed and is treated as absent.",
        (
            FieldSpec("key", STR, "the Redis key or channel", identifier=True),
            replace(REASON, description="what is wrong with the value"),
            FieldSpec("discarded", BOOL, "whether the corrupt value was deleted", optional=True),
        ),
    ),
    EventSpec(
        Event.STORE_UNSEALED,
        Level.WARNING,
        "BROKER_ALLOW_UNSEALED_STORE and no KEK: secrets are stored in Redis unsealed "
        "(development only).",
        (FieldSpec("setting", STR, "the setting that allowed it"), DETAIL),
    ),
    EventSpec(
        Event.STORE_RESEAL_SKIPPED,
        Level.WARNING,
        "`kek reseal` left one key alone and goes on; the command exits non-zero at the end.",
        (
            FieldSpec("key", STR, "the Redis key", identifier=True),
            replace(
                REASON,
                description="'unrecognised_key' (outside the key schema), 'wrong_type' (another "
                "Redis type than its name says) or 'unreadable' (no configured KEK opens it)",
            ),
        ),
    ),
    # control plane
    EventSpec(
        Event.CONTROLPLANE_REQUEST,
        Level.INFO,
        "One HTTP exchange with the control plane.",
        (
            FieldSpec("operation", STR, "mint_biscuit, register_identity, register_task, ..."),
            FieldSpec("method", STR, "the HTTP method"),
            FieldSpec("path", STR, "the URL path (no query, no host credentials)"),
            FieldSpec("status", INT, "the HTTP status, null without an answer", nullable=True),
            replace(ERROR, description="why there is no usable answer, else null", nullable=True),
            DURATION_MS,
            FieldSpec("attempt", INT, "the attempt number within its retry loop (1 first)"),
        ),
        other_levels={Level.WARNING: "no answer, or a status outside 2xx"},
    ),
    EventSpec(
        Event.CONTROLPLANE_RETRY,
        Level.INFO,
        "A control-plane operation is attempted again after a retryable failure.",
        (
            FieldSpec("operation", STR, "the operation being retried"),
            FieldSpec("attempt", INT, "the attempt about to start (2 or more)"),
            FieldSpec("previous_operation", STR, "the step that failed last time"),
            FieldSpec("previous_status", INT, "its HTTP status, or null", nullable=True),
            FieldSpec("previous_error", STR, "its error"),
        ),
    ),
    EventSpec(
        Event.CONTROLPLANE_CIRCUIT_OPENED,
        Level.WARNING,
        "Calls to the control plane are suspended after consecutive failures.",
        (
            IDENTITY,
            FieldSpec("consecutive_failures", INT, "failures in a row that opened it"),
            FieldSpec("cooldown_seconds", NUM, "seconds before one probe call is let through"),
        ),
    ),
    EventSpec(
        Event.CONTROLPLANE_CIRCUIT_CLOSED,
        Level.INFO,
        "The control plane answered again; calls flow normally.",
        (IDENTITY,),
    ),
    EventSpec(
        Event.UPSTREAM_CLEARTEXT_ALLOWED,
        Level.WARNING,
        "BROKER_ALLOW_CLEARTEXT_UPSTREAM is set: upstream URLs may use http:// beyond loopback, "
        "where anyone on the path reads or alters credentials (written once at start).",
        (
            FieldSpec("setting", STR, "the setting that allowed it"),
            FieldSpec(
                "url_settings",
                FieldType.STRINGS,
                "the URL settings that use http:// to a host beyond loopback (may be empty)",
            ),
            DETAIL,
        ),
    ),
    # identities and tasks
    EventSpec(
        Event.IDENTITY_LOADED,
        Level.INFO,
        "An identity from the store, a JWT or an imported key passed validation and is used.",
        (
            IDENTITY,
            RUNTIME,
            FieldSpec("binding_id", STR, "the account binding", identifier=True, optional=True),
            FieldSpec(
                "source", STR, "where the key comes from: register, jwt or import", optional=True
            ),
            FieldSpec(
                "expires_at", STR, "when the identity's JWT expires (ISO 8601)", optional=True
            ),
        ),
    ),
    EventSpec(
        Event.IDENTITY_REGISTERED,
        Level.INFO,
        "A new identity (key pair) was registered at the control plane.",
        (
            IDENTITY,
            RUNTIME,
            FieldSpec("binding_id", STR, "the account binding", identifier=True),
            FieldSpec("profile", STR, "the protocol profile (chatgpt-backend or authapi)"),
            FieldSpec("public_key_ssh", STR, "the public key, ssh-ed25519 form (public)"),
        ),
    ),
    EventSpec(
        Event.IDENTITY_DISCARDED,
        Level.WARNING,
        "A stored identity failed validation and was deleted; a new one will be registered.",
        (IDENTITY, RUNTIME, replace(REASON, description="which check failed")),
    ),
    EventSpec(
        Event.IDENTITY_RESTORED,
        Level.WARNING,
        "The store had lost the identity (Redis restarted empty); this replica wrote it back.",
        (IDENTITY, RUNTIME),
    ),
    EventSpec(
        Event.IDENTITY_ROTATED,
        Level.WARNING,
        "An operator rotated the identity: a new key pair was registered and replaces the old.",
        (
            IDENTITY,
            RUNTIME,
            FieldSpec(
                "previous_agent_runtime_id",
                STR,
                "the runtime id it replaced, null when there was none",
                identifier=True,
                nullable=True,
            ),
        ),
    ),
    EventSpec(
        Event.CACHE_FLUSHED,
        Level.INFO,
        "An operator flushed the identity's cached assertions on every replica.",
        (IDENTITY,),
    ),
    EventSpec(
        Event.TASK_REGISTERED,
        Level.INFO,
        "A task was registered at the control plane.",
        (
            IDENTITY,
            RUNTIME,
            TASK_ID,
            TASK_KIND,
            replace(
                THREAD_ID,
                description="the thread's id; null for the background task",
                nullable=True,
            ),
            replace(DURATION_MS, description="milliseconds the registration took"),
        ),
    ),
    EventSpec(
        Event.TASK_REJECTED,
        Level.WARNING,
        "A worker reported a 401/403 on the current task: it is being replaced.",
        (IDENTITY, RUNTIME, TASK_ID, TASK_KIND, HTTP_STATUS),
    ),
    EventSpec(
        Event.TASK_INVALIDATED,
        Level.INFO,
        "A task was removed from the shared state (every replica forgets it).",
        (IDENTITY, RUNTIME, TASK_ID, TASK_KIND),
    ),
    EventSpec(
        Event.TASK_REJECTION_THROTTLED,
        Level.WARNING,
        "A rejection report came too soon after the last replacement and was not acted on.",
        (
            IDENTITY,
            TASK_ID,
            HTTP_STATUS,
            FieldSpec("retry_after_seconds", NUM, "seconds until a replacement is allowed again"),
        ),
    ),
    EventSpec(
        Event.BEARER_REJECTION_THROTTLED,
        Level.WARNING,
        "A report of a 401/403 on the account's current Bearer came within the fleet-wide interval "
        "of the last one: the token is not refreshed (or re-read) again; the caller gets the current one.",
        (
            IDENTITY,
            HTTP_STATUS,
            FieldSpec("retry_after_seconds", NUM, "the interval between acted-on reports"),
        ),
    ),
    EventSpec(
        Event.TASK_BUDGET_EXHAUSTED,
        Level.WARNING,
        "A new thread task was refused (RESOURCE_EXHAUSTED): a fleet-wide budget or the cap on live "
        "thread tasks is spent. At most one line per identity, limit and caller every 10 s.",
        (
            IDENTITY,
            FieldSpec(
                "caller",
                STR,
                "the caller whose request was refused (null: the broker itself)",
                identifier=True,
                nullable=True,
            ),
            FieldSpec(
                "limit",
                STR,
                "which limit refused: identity, caller:<name> or live_thread_tasks",
            ),
            FieldSpec("retry_after_seconds", NUM, "seconds until the request would be admitted"),
            FieldSpec("refused", INT, "refusals this line stands for (since the previous line)"),
        ),
    ),
    # authorizations
    EventSpec(
        Event.AUTHORIZATION_FAILED,
        Level.WARNING,
        "A thread's task could not be registered: the call fails with UNAVAILABLE (no Bearer).",
        (
            IDENTITY,
            THREAD_ID,
            replace(REASON, description="the error's ErrorInfo reason"),
            DETAIL,
        ),
    ),
    EventSpec(
        Event.FALLBACK_BEARER,
        Level.WARNING,
        "A Bearer was handed out instead of an assertion, and why.",
        (
            IDENTITY,
            FieldSpec(
                "fallback_reason", STR, "disabled, unsupported_host, identity_unavailable, ..."
            ),
            FieldSpec(
                "error_reason", STR, "the ErrorInfo reason of the failure behind it", optional=True
            ),
            replace(DETAIL, optional=True),
        ),
        other_levels={Level.DEBUG: "a configured fallback (disabled, unsupported host): no error"},
    ),
    EventSpec(
        Event.BOOTSTRAP_COOLDOWN,
        Level.WARNING,
        "An authapi bootstrap failed retryably: Bearer fleet-wide until the cooldown ends.",
        (
            IDENTITY,
            FieldSpec("operation", STR, "the control-plane operation that failed"),
            FieldSpec("cooldown_seconds", NUM, "seconds no replica retries the bootstrap"),
            DETAIL,
        ),
    ),
    EventSpec(
        Event.BEARER_RELOADED,
        Level.INFO,
        "The account's access-token file was (re)read.",
        (
            FieldSpec("path", STR, "the token file"),
            FieldSpec("has_token", BOOL, "whether it holds a usable token"),
            replace(ERROR, description="why the file could not be read", optional=True),
        ),
        other_levels={Level.WARNING: "the file is missing or unreadable"},
    ),
    # the account login (access and refresh token)
    EventSpec(
        Event.ACCOUNT_IMPORTED,
        Level.INFO,
        "An account login (access and refresh token) was imported for the identity.",
        (
            IDENTITY,
            ACCOUNT_ID,
            FieldSpec(
                "user_id", STR, "the ChatGPT user of the login", identifier=True, optional=True
            ),
            FieldSpec("plan_type", STR, "the account's plan, as the id token names it"),
            FieldSpec("fedramp", BOOL, "whether the account is a FedRAMP account"),
            FieldSpec("access_expires_at", STR, "when the access token expires (ISO 8601)"),
            FieldSpec("last_refresh", STR, "when the tokens were obtained (ISO 8601)"),
            FieldSpec("state", STR, "'active' or 'reauth_required'"),
            replace(DETAIL, optional=True),
        ),
    ),
    EventSpec(
        Event.ACCOUNT_REFRESHED,
        Level.INFO,
        "The account's access token was refreshed (once for the whole fleet).",
        (
            IDENTITY,
            ACCOUNT_ID,
            FieldSpec("access_expires_at", STR, "when the new access token expires (ISO 8601)"),
            replace(DURATION_MS, description="milliseconds the refresh took"),
        ),
    ),
    EventSpec(
        Event.ACCOUNT_REFRESH_FAILED,
        Level.WARNING,
        "A refresh of the account's access token failed; the current token stays in use.",
        (
            IDENTITY,
            replace(REASON, description="unavailable, outcome_unknown or bug"),
            replace(DETAIL, optional=True),
            EXCEPTION,
        ),
        other_levels={Level.ERROR: "a bug in the background refresh (with exception)"},
    ),
    EventSpec(
        Event.ACCOUNT_REAUTH_REQUIRED,
        Level.ERROR,
        "The control plane refused the refresh token: a person must log in again.",
        (
            IDENTITY,
            ACCOUNT_ID,
            DETAIL,
            FieldSpec("action", STR, "what the operator should do"),
        ),
    ),
    EventSpec(
        Event.ROUTING_DISCOVERED,
        Level.INFO,
        "The account's workspace route was discovered (once for the fleet; again when the account "
        "or its token changes, or after an hour).",
        (
            IDENTITY,
            ACCOUNT_ID,
            FieldSpec(
                "backend_origin", STR, "the origin the account's calls go to (scheme://host[:port])"
            ),
            FieldSpec(
                "routing_override",
                STR,
                "NO_CONSTRAINT, us or us_cr (sent as x-openai-account-routing-override)",
            ),
            replace(DURATION_MS, description="milliseconds the discovery took"),
        ),
    ),
    EventSpec(
        Event.ROUTING_DISCOVERY_FAILED,
        Level.WARNING,
        "The account's workspace route could not be discovered: calls that need it fail closed "
        "(UNAVAILABLE or FAILED_PRECONDITION) until a discovery succeeds.",
        (
            IDENTITY,
            ACCOUNT_ID,
            replace(
                REASON,
                description="WORKSPACE_ROUTING_UNAVAILABLE, WORKSPACE_ROUTING_INVALID or "
                "WORKSPACE_ROUTING_UNAUTHORIZED",
            ),
            DETAIL,
            FieldSpec(
                "retry_after_seconds",
                NUM,
                "this replica answers the same error without asking again for this long",
            ),
        ),
    ),
    EventSpec(
        Event.ACCOUNT_BINDING_CHANGED,
        Level.WARNING,
        "A refreshed login belongs to another account or user than before.",
        (
            IDENTITY,
            ACCOUNT_ID,
            FieldSpec(
                "previous_account_id", STR, "the account it belonged to before", identifier=True
            ),
        ),
    ),
    # transport
    EventSpec(
        Event.RPC_COMPLETED,
        Level.INFO,
        "The canonical line of one RPC that did not end OK, written at once; a successful RPC "
        "writes one only when the access log samples it (BROKER_ACCESS_LOG_SAMPLE).",
        (
            FieldSpec("grpc_code", STR, "the gRPC status code name (OK, UNAVAILABLE, ...)"),
            DURATION_MS,
            FieldSpec(
                "sampled_1_in",
                INT,
                "on a sampled successful RPC: the access log writes one such line in this many",
                optional=True,
            ),
        ),
        other_levels={Level.DEBUG: "health checks and reflection"},
    ),
    EventSpec(
        Event.RPC_INTERNAL_ERROR,
        Level.ERROR,
        "A bug: an RPC failed with an unexpected exception and answered INTERNAL.",
        (replace(EXCEPTION, optional=False),),
    ),
    EventSpec(
        Event.CALLER_DENIED,
        Level.WARNING,
        "A caller was refused: unauthenticated, not allowed, or over its rate limit.",
        (
            FieldSpec("caller", STR, "the caller's configured name", identifier=True),
            FieldSpec("rule", STR, "the policy rule that refused it"),
        ),
    ),
    EventSpec(
        Event.CALLER_AUTH_DISABLED,
        Level.WARNING,
        "No callers are configured: every process that can connect is trusted fully.",
        (FieldSpec("listen", STR, "the address served without caller authentication"), DETAIL),
    ),
    EventSpec(
        Event.CALLER_ANONYMOUS_ALLOWED,
        Level.WARNING,
        "BROKER_ALLOW_ANONYMOUS_CALLERS is set and no callers are configured: every process that "
        "can reach the listener, on any interface, is trusted fully, admin included.",
        (
            FieldSpec("listen", STR, "the address served without caller authentication"),
            FieldSpec("setting", STR, "the setting that allowed it"),
            DETAIL,
        ),
    ),
    EventSpec(
        Event.TLS_RELOADED,
        Level.INFO,
        "The server's TLS certificate, key or client CA files were (re)read.",
        (
            FieldSpec("ok", BOOL, "whether the files could be read"),
            replace(ERROR, description="why not", optional=True),
        ),
        other_levels={Level.WARNING: "a file could not be read (the previous ones stay in use)"},
    ),
    # emulator
    EventSpec(
        Event.EMULATOR_STARTED,
        Level.INFO,
        "The control-plane emulator listens.",
        (FieldSpec("url", STR, "its base URL"),),
    ),
    EventSpec(
        Event.EMULATOR_REQUEST,
        Level.INFO,
        "The emulator answered one request.",
        (
            FieldSpec("method", STR, "the HTTP method", optional=True),
            FieldSpec("path", STR, "the URL path"),
            FieldSpec(
                "endpoint",
                STR,
                "the protocol endpoint, null for others",
                nullable=True,
                optional=True,
            ),
            FieldSpec(
                "status", INT, "the status sent, null when dropped", nullable=True, optional=True
            ),
            replace(
                REASON,
                description="the refusal reason, null when accepted",
                nullable=True,
                optional=True,
            ),
            FieldSpec("fault", BOOL, "whether an injected fault answered", optional=True),
            replace(DURATION_MS, optional=True),
            replace(ERROR, description="'internal' for an emulator bug", optional=True),
            EXCEPTION,
        ),
        other_levels={Level.ERROR: "an emulator bug (with exception)"},
    ),
)

CATALOGUE: Final[Mapping[Event, EventSpec]] = {spec.event: spec for spec in _SPECS}
"""Every event, in :class:`Event` order by area."""

// What the broker hands a worker: an `Authorization` header value and the facts about it.

import {
  type Authorization as AuthorizationMessage,
  FallbackReason,
  fallbackReasonToJSON,
  Scheme,
  TaskKind,
} from "./gen/credential_broker/v1/broker.js";

/** Scheme of the header value (`unspecified` for one this client does not know). */
export type AuthorizationScheme = "AgentAssertion" | "Bearer" | "unspecified";

/** What the task behind an assertion is for (`unspecified` for a Bearer). */
export type AuthorizationTaskKind = "background" | "thread" | "unspecified";

/** One header value from the broker, ready to put on a request to the control plane. */
export interface Authorization {
  /** The complete value of the `Authorization` header. A secret: never log it. */
  readonly headerValue: string;
  readonly scheme: AuthorizationScheme;
  /** The broker's name of the identity that produced it. */
  readonly identity: string;
  /** Empty for a Bearer. */
  readonly agentRuntimeId: string;
  /** Empty for a Bearer. */
  readonly taskId: string;
  readonly taskKind: AuthorizationTaskKind;
  /** The thread the task belongs to; empty for the background task. */
  readonly threadId: string;
  /** When the assertion was signed; undefined for a Bearer. */
  readonly issuedAt: Date | undefined;
  /** When the broker stops handing this value out; undefined for a Bearer. */
  readonly expiresAt: Date | undefined;
  /**
   * Why a Bearer was returned: `none` for an assertion, else `disabled`, `unsupported_host`,
   * `task_registration_unavailable`, `identity_unavailable`, `requested`, … (the proto's names).
   */
  readonly fallbackReason: string;
  /**
   * Companion headers to send with it (`ChatGPT-Account-ID`, `X-OpenAI-Fedramp`, and
   * `x-openai-account-routing-override` where a workspace route requires it).
   */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * The origin (`scheme://host[:port]`) the identity's account must be called at when the broker
   * discovered a workspace route for it, or `""` when no route applies (use the configured base
   * URL). Send the request to {@link routeUrl}`(auth, url)` and do not follow redirects.
   */
  readonly backendOrigin: string;
}

const SCHEMES: ReadonlyMap<Scheme, AuthorizationScheme> = new Map([
  [Scheme.SCHEME_AGENT_ASSERTION, "AgentAssertion"],
  [Scheme.SCHEME_BEARER, "Bearer"],
]);
const TASK_KINDS: ReadonlyMap<TaskKind, AuthorizationTaskKind> = new Map([
  [TaskKind.TASK_KIND_BACKGROUND, "background"],
  [TaskKind.TASK_KIND_THREAD, "thread"],
]);

function fallbackReason(value: FallbackReason): string {
  if (value === FallbackReason.FALLBACK_REASON_UNSPECIFIED) {
    return "none";
  }
  const name = fallbackReasonToJSON(value);
  return name === "UNRECOGNIZED" ? "unknown" : name.replace(/^FALLBACK_REASON_/, "").toLowerCase();
}

/** The wrapper's view of a generated `Authorization` message. */
export function fromMessage(message: AuthorizationMessage | undefined): Authorization {
  if (message === undefined) {
    throw new TypeError("the broker answered without an authorization");
  }
  return Object.freeze({
    headerValue: message.headerValue,
    scheme: SCHEMES.get(message.scheme) ?? "unspecified",
    identity: message.identity,
    agentRuntimeId: message.agentRuntimeId,
    taskId: message.taskId,
    taskKind: TASK_KINDS.get(message.taskKind) ?? "unspecified",
    threadId: message.threadId,
    issuedAt: message.issuedAt,
    expiresAt: message.expiresAt,
    fallbackReason: fallbackReason(message.fallbackReason),
    headers: Object.freeze({ ...message.headers }),
    backendOrigin: message.backendOrigin,
  });
}

/** Every header to send: the companions plus `Authorization`. */
export function httpHeaders(authorization: Authorization): Record<string, string> {
  return { ...authorization.headers, Authorization: authorization.headerValue };
}

/**
 * Where to send a request with this header: a new `URL` whose scheme, host and port (and any
 * user-info) are `authorization.backendOrigin`'s, with the path, query and fragment of `url`; a
 * plain copy of `url` when there is no route. `url` itself is never modified. A routed request must
 * not follow redirects: pass `redirect: "error"` (or `"manual"`) to `fetch`.
 *
 * @throws TypeError `backendOrigin` is set but is not a `scheme://host[:port]` origin.
 */
export function routeUrl(authorization: Authorization, url: string | URL): URL {
  const routed = new URL(url);
  if (authorization.backendOrigin === "") {
    return routed;
  }
  const origin = new URL(authorization.backendOrigin);
  const malformed = (): TypeError =>
    new TypeError(
      `backendOrigin ${JSON.stringify(authorization.backendOrigin)} is not a scheme://host[:port] origin`,
    );
  if (
    origin.host === "" ||
    origin.username !== "" ||
    origin.password !== "" ||
    (origin.pathname !== "/" && origin.pathname !== "") ||
    origin.search !== "" ||
    origin.hash !== ""
  ) {
    throw malformed();
  }
  routed.username = "";
  routed.password = "";
  routed.protocol = origin.protocol;
  routed.hostname = origin.hostname;
  routed.port = origin.port;
  if (routed.protocol !== origin.protocol || routed.host !== origin.host) {
    throw malformed(); // the URL standard refuses some scheme changes (special to non-special)
  }
  return routed;
}

// BrokerClient: a small promise/async-iterator wrapper over the generated grpc-js client.

import { type ChannelCredentials, credentials as grpcCredentials, Metadata, status } from "@grpc/grpc-js";

import { type Authorization, fromMessage } from "./authorization.js";
import { BrokerError, toBrokerError } from "./errors.js";
import {
  CredentialBrokerClient,
  type GetAuthorizationRequest,
  Mode,
  type WatchAuthorizationResponse,
} from "./gen/credential_broker/v1/broker.js";

const SERVICE = "credential_broker.v1.CredentialBroker";

// Unary calls are retried by grpc-js on UNAVAILABLE only, within each call's deadline.
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [
    {
      name: ["GetAuthorization", "ReportRejection", "EnsureTask"].map((method) => ({
        service: SERVICE,
        method,
      })),
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: "0.1s",
        maxBackoff: "1s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
});

// Keepalive notices a dead connection under an idle watch stream; 30 s stays above the broker's
// minimum ping interval (10 s), so the broker never answers our pings with GOAWAY.
const CHANNEL_OPTIONS = {
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 0,
  "grpc.service_config": SERVICE_CONFIG,
  "grpc.primary_user_agent": "credential-broker-client-node/0.1.0",
};

export interface BrokerClientOptions {
  /** Identity asked for when a call names none (default: the broker's default identity). */
  identity?: string;
  /** Milliseconds allowed for each unary call (its gRPC deadline). Default 5000. */
  timeoutMs?: number;
  /** This worker's caller token, when the broker authenticates callers by token. */
  callerToken?: string;
  /** TLS credentials (default: plaintext, for loopback and sidecars). */
  credentials?: ChannelCredentials;
}

export interface AuthorizationRequest {
  /** The conversation thread (its own task); omit for the background task. */
  threadId?: string;
  /** The broker identity (default: the client's). */
  identity?: string;
  /** Always a Bearer (bootstrap, token refresh, registration-style calls). */
  bearerOnly?: boolean;
  /** The header must stay valid at least this many seconds. */
  minRemainingSeconds?: number;
}

export interface RejectionReport {
  /** The control plane's answer: 401 (default) or 403. */
  httpStatus?: number;
  /** The thread the header was for (default: the rejected Authorization's). */
  threadId?: string;
  /** The broker identity (default: the client's). */
  identity?: string;
}

/**
 * A client for the credential broker.
 *
 * ```ts
 * const broker = new BrokerClient("127.0.0.1:50051");
 * const auth = await broker.getAuthorization({ threadId: "thread-42" });
 * await fetch(url, { headers: httpHeaders(auth) });
 * broker.close();
 * ```
 */
export class BrokerClient {
  private readonly client: CredentialBrokerClient;
  private readonly identity: string;
  private readonly timeoutMs: number;
  private readonly callerToken: string | undefined;

  constructor(address: string, options: BrokerClientOptions = {}) {
    this.identity = options.identity ?? "";
    this.timeoutMs = options.timeoutMs ?? 5_000;
    if (!(this.timeoutMs > 0)) {
      throw new RangeError("timeoutMs: must be positive");
    }
    this.callerToken = options.callerToken;
    this.client = new CredentialBrokerClient(
      address,
      options.credentials ?? grpcCredentials.createInsecure(),
      CHANNEL_OPTIONS,
    );
  }

  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.callerToken !== undefined) {
      metadata.set("authorization", `Bearer ${this.callerToken}`);
    }
    return metadata;
  }

  private deadline(): { deadline: Date } {
    return { deadline: new Date(Date.now() + this.timeoutMs) };
  }

  private request(options: AuthorizationRequest): GetAuthorizationRequest {
    const minRemaining = options.minRemainingSeconds;
    return {
      identity: options.identity ?? this.identity,
      threadId: options.threadId ?? "",
      mode: options.bearerOnly === true ? Mode.MODE_BEARER_ONLY : Mode.MODE_DEFAULT,
      minRemaining:
        minRemaining === undefined
          ? undefined
          : { seconds: Math.trunc(minRemaining), nanos: Math.round((minRemaining % 1) * 1e9) },
    };
  }

  /** The header for one call to the control plane. Rejects with a {@link BrokerError}. */
  getAuthorization(options: AuthorizationRequest = {}): Promise<Authorization> {
    return new Promise((resolve, reject) => {
      this.client.getAuthorization(
        this.request(options),
        this.metadata(),
        this.deadline(),
        (error, response) => {
          if (error) reject(toBrokerError(error));
          else resolve(fromMessage(response.authorization));
        },
      );
    });
  }

  /**
   * Tell the broker the control plane refused a header; resolves to the header to use from now on.
   * The broker replaces an assertion's task once for the whole fleet, however many workers report it.
   */
  reportRejection(
    rejected: Authorization | string,
    options: RejectionReport = {},
  ): Promise<Authorization> {
    const headerValue = typeof rejected === "string" ? rejected : rejected.headerValue;
    const threadId = options.threadId ?? (typeof rejected === "string" ? "" : rejected.threadId);
    return new Promise((resolve, reject) => {
      this.client.reportRejection(
        {
          identity: options.identity ?? this.identity,
          threadId,
          headerValue,
          httpStatus: options.httpStatus ?? 401,
        },
        this.metadata(),
        this.deadline(),
        (error, response) => {
          if (error) reject(toBrokerError(error));
          else resolve(fromMessage(response.authorization));
        },
      );
    });
  }

  /**
   * The current header at once, then a fresh one before each expiry and at once after the task is
   * replaced. Ends when `signal` aborts or the loop breaks; throws a {@link BrokerError} if the
   * stream fails (reconnecting is the caller's choice).
   */
  async *watch(
    options: AuthorizationRequest = {},
    signal?: AbortSignal,
  ): AsyncGenerator<Authorization, void, undefined> {
    signal?.throwIfAborted();
    const call = this.client.watchAuthorization(this.request(options), this.metadata());
    const cancel = (): void => call.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      // A grpc-js stream is a Node Readable in object mode: iterating it yields the messages.
      for await (const message of call as AsyncIterable<WatchAuthorizationResponse>) {
        yield fromMessage(message.authorization);
      }
    } catch (error) {
      const failure = toBrokerError(error);
      if (failure.code === status.CANCELLED && signal?.aborted === true) {
        return;
      }
      throw failure;
    } finally {
      signal?.removeEventListener("abort", cancel);
      call.cancel();
    }
  }

  /** Close the channel; calls in flight fail with CANCELLED. */
  close(): void {
    this.client.close();
  }
}

export { BrokerError };

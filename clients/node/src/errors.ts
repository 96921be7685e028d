// The client's error: a gRPC status with the broker's machine-readable reason.

import { type ServiceError, status } from "@grpc/grpc-js";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

/** Statuses worth retrying later (the broker's README: only UNAVAILABLE-like failures are). */
export const RETRYABLE_CODES: ReadonlySet<status> = new Set([
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
  status.RESOURCE_EXHAUSTED,
]);

/** A failed broker call. */
export class BrokerError extends Error {
  override readonly name = "BrokerError";

  constructor(
    message: string,
    /** The gRPC status code. */
    readonly code: status,
    /** The broker's `google.rpc.ErrorInfo` reason (`INVALID_ARGUMENT`, `NO_BEARER_TOKEN`, …). */
    readonly reason: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The status code's name, e.g. `UNAVAILABLE`. */
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }

  /** Whether trying again later can succeed. INVALID_ARGUMENT and CANCELLED never do. */
  get retryable(): boolean {
    return RETRYABLE_CODES.has(this.code);
  }
}

// google.rpc.Status { repeated google.protobuf.Any details = 3 }, Any { type_url = 1; value = 2 },
// ErrorInfo { reason = 1 }: decoded by hand, three fields do not justify generating googleapis.
function fields(bytes: Uint8Array, visit: (field: number, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (wireType !== WireType.LengthDelimited || !visit(field, reader)) {
      reader.skip(wireType, field);
    }
  }
}

function errorInfoReason(details: Uint8Array): string | undefined {
  let reason: string | undefined;
  fields(details, (field, status) => {
    if (field !== 3 || reason !== undefined) return false;
    let typeUrl = "";
    let value: Uint8Array | undefined;
    fields(status.bytes(), (anyField, any) => {
      if (anyField === 1) typeUrl = any.string();
      else if (anyField === 2) value = any.bytes();
      else return false;
      return true;
    });
    if (typeUrl === ERROR_INFO_TYPE && value !== undefined) {
      fields(value, (infoField, info) => {
        if (infoField !== 1) return false;
        reason = info.string();
        return true;
      });
    }
    return true;
  });
  return reason;
}

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number";
}

/** The BrokerError for whatever a grpc-js call failed with. */
export function toBrokerError(error: unknown): BrokerError {
  if (error instanceof BrokerError) return error;
  if (!isServiceError(error)) {
    return new BrokerError(String(error), status.UNKNOWN, undefined, { cause: error });
  }
  let reason: string | undefined;
  const [details] = error.metadata?.get(STATUS_DETAILS_KEY) ?? [];
  if (details instanceof Uint8Array) {
    try {
      reason = errorInfoReason(details);
    } catch {
      reason = undefined; // malformed details: the status code still says what happened
    }
  }
  const message = `${status[error.code] ?? error.code}: ${error.details}`;
  return new BrokerError(message, error.code, reason, { cause: error });
}

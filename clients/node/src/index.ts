// @credential-broker/client: Authorization headers for worker fleets, from the credential broker.

export {
  type Authorization,
  type AuthorizationScheme,
  type AuthorizationTaskKind,
  httpHeaders,
  routeUrl,
} from "./authorization.js";
export {
  type AuthorizationRequest,
  BrokerClient,
  type BrokerClientOptions,
  type RejectionReport,
} from "./client.js";
export { BrokerError, RETRYABLE_CODES } from "./errors.js";

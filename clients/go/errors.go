package credentialbroker

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const errorInfoType = "type.googleapis.com/google.rpc.ErrorInfo"

// Error is a failed broker call: the gRPC status code and the broker's machine-readable reason.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the broker's google.rpc.ErrorInfo reason ("INVALID_ARGUMENT", "NO_BEARER_TOKEN",
	// ...), empty when the status carried none (a transport error).
	Reason string
	// Message is the broker's message (precise, free of secrets).
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("credential broker: %s: %s", e.Code, e.Message)
}

// Retryable reports whether trying again later can succeed (UNAVAILABLE, DEADLINE_EXCEEDED,
// RESOURCE_EXHAUSTED). INVALID_ARGUMENT and CANCELLED never do.
func (e *Error) Retryable() bool {
	switch e.Code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	default:
		return false
	}
}

// RoutedRedirectError is returned by a Transport when a routed request (one sent to an
// Authorization's BackendOrigin) is answered with a redirect: routed requests never follow them.
// An http.Client wraps it in a *url.Error; errors.As finds it.
type RoutedRedirectError struct {
	// StatusCode is the control plane's 3xx status.
	StatusCode int
}

func (e *RoutedRedirectError) Error() string {
	return fmt.Sprintf("credential broker: a routed request was answered with HTTP %d and a Location; "+
		"routed requests never follow redirects", e.StatusCode)
}

// errorInfoReason decodes field 1 (reason) of a google.rpc.ErrorInfo by hand: one string field does
// not justify depending on the googleapis packages.
func errorInfoReason(value []byte) string {
	for len(value) > 0 {
		number, kind, n := protowire.ConsumeTag(value)
		if n < 0 {
			return ""
		}
		value = value[n:]
		if number == 1 && kind == protowire.BytesType {
			reason, m := protowire.ConsumeString(value)
			if m < 0 {
				return ""
			}
			return reason
		}
		m := protowire.ConsumeFieldValue(number, kind, value)
		if m < 0 {
			return ""
		}
		value = value[m:]
	}
	return ""
}

// toError turns a gRPC error into an *Error (other errors pass through unchanged).
func toError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	result := &Error{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Proto().GetDetails() {
		if detail.GetTypeUrl() == errorInfoType {
			result.Reason = errorInfoReason(detail.GetValue())
			break
		}
	}
	return result
}

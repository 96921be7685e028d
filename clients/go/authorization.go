package credentialbroker

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	pb "credential-broker/clients/go/credentialbrokerv1"
)

// Authorization is one header value from the broker, ready to put on a request to the control plane.
type Authorization struct {
	// HeaderValue is the complete value of the Authorization header. A secret: never log it
	// (String and fmt's %v leave it out).
	HeaderValue string
	// Scheme is "AgentAssertion", "Bearer" or "unspecified" (a scheme this client does not know).
	Scheme string
	// Identity is the broker's name of the identity that produced it.
	Identity string
	// AgentRuntimeID is empty for a Bearer.
	AgentRuntimeID string
	// TaskID is empty for a Bearer.
	TaskID string
	// TaskKind is "background", "thread" or "unspecified" (a Bearer).
	TaskKind string
	// ThreadID is the thread the task belongs to; empty for the background task.
	ThreadID string
	// IssuedAt is when the assertion was signed; zero for a Bearer.
	IssuedAt time.Time
	// ExpiresAt is when the broker stops handing this value out; zero for a Bearer.
	ExpiresAt time.Time
	// FallbackReason says why a Bearer was returned: "none" for an assertion, else "disabled",
	// "unsupported_host", "task_registration_unavailable", "identity_unavailable", "requested", ...
	FallbackReason string
	// Headers are the companion headers to send with it (ChatGPT-Account-ID, X-OpenAI-Fedramp, and
	// x-openai-account-routing-override where a workspace route requires it).
	Headers map[string]string
	// BackendOrigin is the origin ("scheme://host[:port]", no path) the identity's account must be
	// called at when the broker discovered a workspace route for it, or empty when no route applies
	// (use the configured base URL). A routed request must not follow redirects; see RouteURL.
	BackendOrigin string
}

// RouteURL returns a copy of u sent where this header must go: its scheme and host (with the port)
// replaced by BackendOrigin's, its user-info dropped, its path, query and fragment kept. Without a
// BackendOrigin it is an unchanged copy. u itself is never modified.
//
// A BackendOrigin that is not a "scheme://host[:port]" origin leaves the copy's scheme and host
// empty, so a request sent to it fails instead of going anywhere else.
func (a Authorization) RouteURL(u *url.URL) *url.URL {
	routed := *u
	if u.User != nil {
		user := *u.User
		routed.User = &user
	}
	if a.BackendOrigin == "" {
		return &routed
	}
	routed.User = nil
	routed.Scheme, routed.Host = "", ""
	origin, err := url.Parse(a.BackendOrigin)
	if err == nil && origin.Scheme != "" && origin.Host != "" && origin.User == nil &&
		(origin.Path == "" || origin.Path == "/") && origin.RawQuery == "" && origin.Fragment == "" {
		routed.Scheme, routed.Host = origin.Scheme, origin.Host
	}
	return &routed
}

// Apply sets the Authorization header and its companions on req (replacing earlier values).
func (a *Authorization) Apply(req *http.Request) {
	for name, value := range a.Headers {
		req.Header.Set(name, value)
	}
	req.Header.Set("Authorization", a.HeaderValue)
}

// String describes the header without its secret value.
func (a *Authorization) String() string {
	return fmt.Sprintf(
		"Authorization{scheme=%s identity=%s task=%s kind=%s thread=%q expires=%s fallback=%s origin=%q}",
		a.Scheme, a.Identity, a.TaskID, a.TaskKind, a.ThreadID,
		a.ExpiresAt.Format(time.RFC3339), a.FallbackReason, a.BackendOrigin,
	)
}

var schemes = map[pb.Scheme]string{
	pb.Scheme_SCHEME_AGENT_ASSERTION: "AgentAssertion",
	pb.Scheme_SCHEME_BEARER:          "Bearer",
}

var taskKinds = map[pb.TaskKind]string{
	pb.TaskKind_TASK_KIND_BACKGROUND: "background",
	pb.TaskKind_TASK_KIND_THREAD:     "thread",
}

func fallbackReason(value pb.FallbackReason) string {
	if value == pb.FallbackReason_FALLBACK_REASON_UNSPECIFIED {
		return "none"
	}
	name, known := pb.FallbackReason_name[int32(value)]
	if !known {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(name, "FALLBACK_REASON_"))
}

func orUnspecified(name string, known bool) string {
	if !known {
		return "unspecified"
	}
	return name
}

func fromMessage(message *pb.Authorization) *Authorization {
	scheme, schemeKnown := schemes[message.GetScheme()]
	kind, kindKnown := taskKinds[message.GetTaskKind()]
	auth := &Authorization{
		HeaderValue:    message.GetHeaderValue(),
		Scheme:         orUnspecified(scheme, schemeKnown),
		Identity:       message.GetIdentity(),
		AgentRuntimeID: message.GetAgentRuntimeId(),
		TaskID:         message.GetTaskId(),
		TaskKind:       orUnspecified(kind, kindKnown),
		ThreadID:       message.GetThreadId(),
		FallbackReason: fallbackReason(message.GetFallbackReason()),
		Headers:        make(map[string]string, len(message.GetHeaders())),
		BackendOrigin:  message.GetBackendOrigin(),
	}
	if message.IssuedAt != nil {
		auth.IssuedAt = message.IssuedAt.AsTime()
	}
	if message.ExpiresAt != nil {
		auth.ExpiresAt = message.ExpiresAt.AsTime()
	}
	for name, value := range message.GetHeaders() {
		auth.Headers[name] = value
	}
	return auth
}

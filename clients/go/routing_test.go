package credentialbroker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	credentialbroker "credential-broker/clients/go"
	pb "credential-broker/clients/go/credentialbrokerv1"
)

const (
	routingHeader = "x-openai-account-routing-override"
	routedPath    = "/backend-api/wham/tasks?limit=5&cursor=a%2Fb"
)

func TestRouteURL(t *testing.T) {
	cases := []struct{ origin, in, want string }{
		{"https://us.chatgpt.example:8443", "https://chatgpt.example/backend-api/me?x=1",
			"https://us.chatgpt.example:8443/backend-api/me?x=1"},
		{"https://us.chatgpt.example", "https://chatgpt.example:444/backend-api/me",
			"https://us.chatgpt.example/backend-api/me"},
		{"http://127.0.0.1:8080", "https://chatgpt.example/backend-api/a%2Fb?q=1&r=%2F#frag",
			"http://127.0.0.1:8080/backend-api/a%2Fb?q=1&r=%2F#frag"},
		{"https://us.chatgpt.example", "http://user:pw@127.0.0.1:9/p", "https://us.chatgpt.example/p"},
		{"", "https://user:pw@chatgpt.example:444/backend-api/me?x=1#f",
			"https://user:pw@chatgpt.example:444/backend-api/me?x=1#f"},
	}
	for _, c := range cases {
		in, err := url.Parse(c.in)
		if err != nil {
			t.Fatal(err)
		}
		auth := credentialbroker.Authorization{HeaderValue: "Bearer x", BackendOrigin: c.origin}

		routed := auth.RouteURL(in)

		if routed.String() != c.want {
			t.Errorf("%q routed by %q: got %q, want %q", c.in, c.origin, routed, c.want)
		}
		if routed == in || in.String() != c.in {
			t.Errorf("%q routed by %q: the input was returned or changed (%q)", c.in, c.origin, in)
		}
		if in.User != nil && routed.User == in.User {
			t.Errorf("%q routed by %q: the copy shares the input's user-info", c.in, c.origin)
		}
	}
}

func TestRouteURLRefusesAMalformedOrigin(t *testing.T) {
	for _, origin := range []string{"us.chatgpt.example", "https://us.chatgpt.example/backend-api", "https://h?x"} {
		in, _ := url.Parse("https://chatgpt.example/backend-api/me")
		auth := credentialbroker.Authorization{BackendOrigin: origin}

		routed := auth.RouteURL(in)

		if routed.Scheme != "" || routed.Host != "" || routed.Path != "/backend-api/me" {
			t.Errorf("origin %q: got %q, want no scheme and host (a request to it fails)", origin, routed)
		}
	}
}

// seen is one request a recorder received.
type seen struct {
	method, uri, host, body string
	header                  http.Header
}

// answer is what a recorder answers: a status and headers (a Location, for a redirect).
type answer struct {
	status int
	header map[string]string
}

// recorder is a real HTTP server on 127.0.0.1 that records each request and answers from a
// script (200 once the script is used up).
type recorder struct {
	*httptest.Server
	mu      sync.Mutex
	seen    []seen
	answers []answer
}

func record(t *testing.T, answers ...answer) *recorder {
	t.Helper()
	r := &recorder{answers: answers}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.seen = append(r.seen, seen{req.Method, req.RequestURI, req.Host, string(body), req.Header.Clone()})
		next := answer{status: http.StatusOK}
		if len(r.answers) > 0 {
			next, r.answers = r.answers[0], r.answers[1:]
		}
		r.mu.Unlock()
		for name, value := range next.header {
			w.Header().Set(name, value)
		}
		w.WriteHeader(next.status)
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *recorder) requests() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.seen...)
}

// routes says which origin the interceptor adds to the broker's answers.
type routes struct {
	get    string // GetAuthorization's answers
	report string // ReportRejection's answers (the replacement); "" leaves it unrouted
}

// routedClient is a client of the real broker whose answers get a workspace route on the way in (a
// client interceptor), as the broker will hand them out: BackendOrigin and the routing override.
func routedClient(t *testing.T, r *routes) *credentialbroker.Client {
	t.Helper()
	intercept := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
			return err
		}
		var auth *pb.Authorization
		origin := r.get
		switch message := reply.(type) {
		case *pb.GetAuthorizationResponse:
			auth = message.GetAuthorization()
		case *pb.ReportRejectionResponse:
			auth, origin = message.GetAuthorization(), r.report
		}
		if auth != nil && origin != "" {
			auth.BackendOrigin = origin
			if auth.Headers == nil {
				auth.Headers = map[string]string{}
			}
			auth.Headers[routingHeader] = "us"
		}
		return nil
	}
	client, err := credentialbroker.Dial(broker.address, credentialbroker.WithTimeout(callTimeout),
		credentialbroker.WithDialOptions(grpc.WithUnaryInterceptor(intercept)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// checkRouted fails unless got is the caller's request, sent to the routed server with every
// header it needs.
func checkRouted(t *testing.T, got seen, routed *recorder) {
	t.Helper()
	if got.uri != routedPath || got.host != strings.TrimPrefix(routed.URL, "http://") {
		t.Errorf("routed request: %s %s (Host %s), want %s at %s", got.method, got.uri, got.host, routedPath, routed.URL)
	}
	if got.header.Get(routingHeader) != "us" || got.header.Get("ChatGPT-Account-ID") != "acct-dev" ||
		!strings.HasPrefix(got.header.Get("Authorization"), "AgentAssertion ") {
		t.Errorf("routed request is missing headers: override %q, account %q", got.header.Get(routingHeader),
			got.header.Get("ChatGPT-Account-ID"))
	}
}

func TestTransportSendsARoutedRequestToTheOrigin(t *testing.T) {
	base, routed := record(t), record(t)
	client := routedClient(t, &routes{get: routed.URL})
	httpClient := &http.Client{Transport: client.Transport(credentialbroker.Request{}), Timeout: callTimeout}

	resp, err := httpClient.Post(base.URL+routedPath, "application/json", strings.NewReader(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	got := routed.requests()
	if resp.StatusCode != http.StatusOK || len(got) != 1 || len(base.requests()) != 0 {
		t.Fatalf("status %d; routed server got %d requests, base %d", resp.StatusCode, len(got), len(base.requests()))
	}
	checkRouted(t, got[0], routed)
	if got[0].method != http.MethodPost || got[0].body != `{"n":1}` {
		t.Errorf("routed request: %s with body %q", got[0].method, got[0].body)
	}
}

func TestTransportRoutesTheRetryByItsReplacement(t *testing.T) {
	base := record(t)
	routed := record(t, answer{status: http.StatusUnauthorized})
	rerouted := record(t)
	client := routedClient(t, &routes{get: routed.URL, report: rerouted.URL})
	// a thread of its own: a task another test just had replaced is not replaced again at once
	request := credentialbroker.Request{ThreadID: "go-routed-retry"}
	httpClient := &http.Client{Transport: client.Transport(request), Timeout: callTimeout}

	resp, err := httpClient.Post(base.URL+routedPath, "application/json", strings.NewReader(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	first, second := routed.requests(), rerouted.requests()
	if resp.StatusCode != http.StatusOK || len(first) != 1 || len(second) != 1 || len(base.requests()) != 0 {
		t.Fatalf("status %d; routed %d, rerouted %d, base %d requests", resp.StatusCode, len(first),
			len(second), len(base.requests()))
	}
	checkRouted(t, first[0], routed)
	checkRouted(t, second[0], rerouted)
	if first[0].header.Get("Authorization") == second[0].header.Get("Authorization") || second[0].body != `{"n":1}` {
		t.Errorf("the retry did not carry the replacement and the body: same header %v, body %q", first[0].header.Get("Authorization") == second[0].header.Get("Authorization"), second[0].body)
	}
}

func TestTransportSendsAnUnroutedReplacementWhereAsked(t *testing.T) {
	base := record(t)
	routed := record(t, answer{status: http.StatusUnauthorized})
	client := routedClient(t, &routes{get: routed.URL})
	request := credentialbroker.Request{ThreadID: "go-unrouted-retry"}
	httpClient := &http.Client{Transport: client.Transport(request), Timeout: callTimeout}

	resp, err := httpClient.Get(base.URL + routedPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	retry := base.requests()
	if resp.StatusCode != http.StatusOK || len(routed.requests()) != 1 || len(retry) != 1 {
		t.Fatalf("status %d; routed %d, base %d requests", resp.StatusCode, len(routed.requests()), len(retry))
	}
	if retry[0].uri != routedPath || retry[0].header.Get(routingHeader) != "" {
		t.Errorf("unrouted retry: %s, override %q", retry[0].uri, retry[0].header.Get(routingHeader))
	}
}

func TestTransportRefusesARoutedRedirect(t *testing.T) {
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		base, elsewhere := record(t), record(t)
		routed := record(t, answer{status: status, header: map[string]string{"Location": elsewhere.URL + "/elsewhere"}})
		client := routedClient(t, &routes{get: routed.URL})
		// the default CheckRedirect follows redirects: the transport must refuse them itself
		httpClient := &http.Client{Transport: client.Transport(credentialbroker.Request{}), Timeout: callTimeout}

		resp, err := httpClient.Get(base.URL + routedPath)

		var refused *credentialbroker.RoutedRedirectError
		if !errors.As(err, &refused) || refused.StatusCode != status {
			if resp != nil {
				resp.Body.Close()
			}
			t.Fatalf("%d: expected a RoutedRedirectError, got %v", status, err)
		}
		if !strings.Contains(err.Error(), "routed requests never follow redirects") ||
			strings.Contains(refused.Error(), "elsewhere") || strings.Contains(refused.Error(), "AgentAssertion") {
			t.Errorf("%d: unclear or leaky error: %v", status, refused)
		}
		if len(routed.requests()) != 1 || len(elsewhere.requests()) != 0 || len(base.requests()) != 0 {
			t.Fatalf("%d: routed %d, redirect target %d, base %d requests", status, len(routed.requests()),
				len(elsewhere.requests()), len(base.requests()))
		}
	}
}

func TestTransportFollowsAnUnroutedRedirectAsBefore(t *testing.T) {
	elsewhere := record(t)
	base := record(t, answer{status: http.StatusFound, header: map[string]string{"Location": elsewhere.URL + "/elsewhere"}})
	httpClient := &http.Client{Transport: dial(t).Transport(credentialbroker.Request{}), Timeout: callTimeout}

	resp, err := httpClient.Get(base.URL + routedPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	got := elsewhere.requests()
	if resp.StatusCode != http.StatusOK || len(got) != 1 || got[0].uri != "/elsewhere" {
		t.Fatalf("status %d; the redirect target got %d requests", resp.StatusCode, len(got))
	}
	if first := base.requests(); len(first) != 1 || first[0].uri != routedPath || first[0].header.Get(routingHeader) != "" {
		t.Fatalf("unrouted request: %+v", first)
	}
}

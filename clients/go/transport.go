package credentialbroker

import (
	"io"
	"net/http"
)

// Transport is an http.RoundTripper that puts the broker's header and its companions on every
// request, and recovers from one 401: it reports the refused header with ReportRejection once and
// sends the request once more with the replacement. A second refusal is returned as it is, and so is
// a 401 to a request whose body cannot be sent again (one without GetBody).
//
// When the header has a BackendOrigin (a workspace route), the request is sent there instead
// (Authorization.RouteURL: path and query kept; the retry is routed by its replacement), and a 3xx
// answer with a Location to a routed request is refused: RoundTrip closes it and returns a
// *RoutedRedirectError, so an http.Client never follows it, whatever its CheckRedirect says.
// Requests without a route are sent and answered exactly as asked.
//
//	httpClient := &http.Client{Transport: broker.Transport(credentialbroker.Request{ThreadID: "t-1"})}
type Transport struct {
	// Broker supplies the headers.
	Broker *Client
	// Request says which header (thread, identity, bearer-only).
	Request Request
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
}

// Transport returns an http.RoundTripper that signs requests with headers for request.
func (c *Client) Transport(request Request) *Transport {
	return &Transport{Broker: c, Request: request}
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// RoundTrip implements http.RoundTripper. Broker errors are returned as *Error.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	auth, err := t.Broker.GetAuthorization(ctx, t.Request)
	if err != nil {
		return nil, err
	}
	first := req.Clone(ctx) // a RoundTripper must not modify the caller's request
	route(first, auth)
	auth.Apply(first)
	resp, err := t.send(first, auth)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil
	}
	replacement, err := t.Broker.ReportRejection(ctx, auth, resp.StatusCode)
	if err == nil && t.Request.BearerOnly {
		// A report answers with a default-mode header; a bearer-only request asks again.
		replacement, err = t.Broker.GetAuthorization(ctx, t.Request)
	}
	if err != nil {
		return resp, nil // the caller still gets the control plane's answer
	}
	second := req.Clone(ctx)
	if req.GetBody != nil {
		if second.Body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	route(second, replacement)
	replacement.Apply(second)
	return t.send(second, replacement)
}

// route sends req (a clone) to auth's BackendOrigin, when it has one.
func route(req *http.Request, auth *Authorization) {
	if auth.BackendOrigin == "" {
		return
	}
	req.URL = auth.RouteURL(req.URL)
	req.Host = "" // the Host header follows the URL
}

// send sends req, signed with auth, and refuses a redirect answering a routed request.
func (t *Transport) send(req *http.Request, auth *Authorization) (*http.Response, error) {
	resp, err := t.base().RoundTrip(req)
	if err != nil || auth.BackendOrigin == "" || !isRedirect(resp) {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return nil, &RoutedRedirectError{StatusCode: resp.StatusCode}
}

// isRedirect reports whether resp is a 3xx with a Location, one an http.Client would follow.
func isRedirect(resp *http.Response) bool {
	return resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != ""
}

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
	auth.Apply(first)
	resp, err := t.base().RoundTrip(first)
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
	replacement.Apply(second)
	return t.base().RoundTrip(second)
}

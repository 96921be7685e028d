// Package credentialbroker is a small client for the credential broker: it asks for the value of an
// Authorization header (and its companion headers) for a call to the control plane, and reports a
// 401 so that the broker replaces the task once for the whole fleet.
//
//	client, err := credentialbroker.Dial("127.0.0.1:50051")
//	auth, err := client.GetAuthorization(ctx, credentialbroker.Request{ThreadID: "thread-42"})
//	auth.Apply(req)
//
// The generated gRPC code is in the credentialbrokerv1 package.
package credentialbroker

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "credential-broker/clients/go/credentialbrokerv1"
)

const (
	defaultTimeout = 5 * time.Second
	// Unary calls are retried on UNAVAILABLE only, within the call's deadline. (grpc-go 1.33, the
	// Debian version, runs service-config retries only with GRPC_GO_RETRY=on; so here, by hand.)
	maxAttempts  = 3
	firstBackoff = 100 * time.Millisecond
)

// Request says which header is wanted.
type Request struct {
	// ThreadID is the conversation thread (its own task); empty for the background task.
	ThreadID string
	// Identity is the broker identity (default: the client's, else the broker's default).
	Identity string
	// BearerOnly asks for the account's Bearer (bootstrap, token refresh, registration-style calls).
	BearerOnly bool
	// MinRemaining asks for a header that stays valid at least this long.
	MinRemaining time.Duration
}

// Option configures Dial.
type Option func(*config)

type config struct {
	identity    string
	timeout     time.Duration
	callerToken string
	creds       credentials.TransportCredentials
	dialOptions []grpc.DialOption
}

// WithIdentity sets the identity asked for when a request names none.
func WithIdentity(identity string) Option { return func(c *config) { c.identity = identity } }

// WithTimeout sets the deadline of each call that has none sooner (default 5 s).
func WithTimeout(timeout time.Duration) Option { return func(c *config) { c.timeout = timeout } }

// WithCallerToken sends this worker's caller token, for brokers that authenticate callers by token.
func WithCallerToken(token string) Option { return func(c *config) { c.callerToken = token } }

// WithTransportCredentials uses TLS (with a client certificate for brokers that authenticate callers
// by mTLS). The default is plaintext, for loopback and sidecars.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *config) { c.creds = creds }
}

// WithDialOptions adds gRPC dial options.
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, options...) }
}

// Client talks to one broker. It is safe for concurrent use; Close it when done.
type Client struct {
	conn   *grpc.ClientConn
	stub   pb.CredentialBrokerClient
	config config
}

// Dial returns a client for the broker at target. The connection is made lazily (and re-made after
// failures) by gRPC; calls fail with a retryable *Error while the broker cannot be reached.
func Dial(target string, options ...Option) (*Client, error) {
	cfg := config{timeout: defaultTimeout}
	for _, option := range options {
		option(&cfg)
	}
	dial := []grpc.DialOption{
		// Keepalive notices a dead connection under an idle watch stream; 30 s stays above the
		// broker's minimum ping interval (10 s).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithUserAgent("credential-broker-client-go/0.1.0"),
	}
	if cfg.creds != nil {
		dial = append(dial, grpc.WithTransportCredentials(cfg.creds))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	conn, err := grpc.Dial(target, append(dial, cfg.dialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: pb.NewCredentialBrokerClient(conn), config: cfg}, nil
}

// Close closes the connection; calls in flight fail with CANCELLED.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) outgoing(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.config.callerToken != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.config.callerToken)
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= c.config.timeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.config.timeout)
}

func (c *Client) identity(requested string) string {
	if requested != "" {
		return requested
	}
	return c.config.identity
}

func mode(bearerOnly bool) pb.Mode {
	if bearerOnly {
		return pb.Mode_MODE_BEARER_ONLY
	}
	return pb.Mode_MODE_DEFAULT
}

func minRemaining(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

// retry runs call until it succeeds, fails with anything but UNAVAILABLE, has run maxAttempts
// times, or ctx is done.
func retry(ctx context.Context, call func() error) error {
	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		err := toError(call())
		var failure *Error
		if err == nil || attempt == maxAttempts || !errors.As(err, &failure) || failure.Code != codes.Unavailable {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// GetAuthorization returns the header for one call to the control plane. Errors are *Error.
func (c *Client) GetAuthorization(ctx context.Context, request Request) (*Authorization, error) {
	ctx, cancel := c.outgoing(ctx)
	defer cancel()
	message := &pb.GetAuthorizationRequest{
		Identity:     c.identity(request.Identity),
		ThreadId:     request.ThreadID,
		Mode:         mode(request.BearerOnly),
		MinRemaining: minRemaining(request.MinRemaining),
	}
	var response *pb.GetAuthorizationResponse
	err := retry(ctx, func() (err error) {
		response, err = c.stub.GetAuthorization(ctx, message)
		return err
	})
	if err != nil {
		return nil, err
	}
	return fromMessage(response.GetAuthorization()), nil
}

// ReportRejection tells the broker the control plane refused rejected with httpStatus (401 or 403)
// and returns the header to use from now on. The broker replaces an assertion's task once for the
// whole fleet, however many workers report it. Errors are *Error.
func (c *Client) ReportRejection(ctx context.Context, rejected *Authorization, httpStatus int) (*Authorization, error) {
	ctx, cancel := c.outgoing(ctx)
	defer cancel()
	identity := rejected.Identity
	if identity == "" {
		identity = c.identity("")
	}
	message := &pb.ReportRejectionRequest{
		Identity:    identity,
		ThreadId:    rejected.ThreadID,
		HeaderValue: rejected.HeaderValue,
		HttpStatus:  int32(httpStatus),
	}
	var response *pb.ReportRejectionResponse
	err := retry(ctx, func() (err error) {
		response, err = c.stub.ReportRejection(ctx, message)
		return err
	})
	if err != nil {
		return nil, err
	}
	return fromMessage(response.GetAuthorization()), nil
}

// Watch calls update with the current header at once, then with a fresh one before each expiry and
// at once after the task is replaced, until ctx is done (Watch then returns nil), update returns an
// error (returned as is) or the stream fails (an *Error; reconnecting is the caller's choice).
func (c *Client) Watch(ctx context.Context, request Request, update func(*Authorization) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.config.callerToken != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.config.callerToken)
	}
	stream, err := c.stub.WatchAuthorization(ctx, &pb.WatchAuthorizationRequest{
		Identity:     c.identity(request.Identity),
		ThreadId:     request.ThreadID,
		Mode:         mode(request.BearerOnly),
		MinRemaining: minRemaining(request.MinRemaining),
	})
	if err != nil {
		return toError(err)
	}
	for {
		response, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return &Error{Code: codes.Unavailable, Message: "the broker ended the stream"}
			}
			return toError(err)
		}
		if err := update(fromMessage(response.GetAuthorization())); err != nil {
			return err
		}
	}
}

package credentialbroker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	credentialbroker "credential-broker/clients/go"
)

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
	callTimeout  = 10 * time.Second
)

// broker is the `credential-broker dev` process (the control-plane emulator plus a broker on the
// embedded store) that TestMain starts on free loopback ports and stops after the tests.
var broker struct {
	address         string
	controlPlaneURL string
	emulatorRoot    string
}

var addressLine = regexp.MustCompile(`broker \(gRPC\):\s+(\S+)`)
var emulatorLine = regexp.MustCompile(`control-plane emulator:\s+(\S+)`)

// brokerBinary is $CREDENTIAL_BROKER_BIN, else .venv/bin/credential-broker in the nearest parent
// directory that has one, else credential-broker on PATH.
func brokerBinary() (string, error) {
	if path := os.Getenv("CREDENTIAL_BROKER_BIN"); path != "" {
		return path, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		candidate := filepath.Join(dir, ".venv", "bin", "credential-broker")
		if _, err := os.Stat(candidate); err == nil {
			return candidate, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return exec.LookPath("credential-broker")
		}
		dir = parent
	}
}

func startBroker() (stop func(), err error) {
	binary, err := brokerBinary()
	if err != nil {
		return nil, fmt.Errorf("credential-broker not found (set CREDENTIAL_BROKER_BIN): %w", err)
	}
	cmd := exec.Command(binary, "dev", "--listen", "127.0.0.1:0",
		"--emulator-listen", "127.0.0.1:0", "--log-level", "warning")
	// If this test binary dies without running stop (a panic, a kill), the broker goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	ready := make(chan [2]string, 1)
	var output strings.Builder
	go func() {
		var address, url string
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			line := scanner.Text()
			output.WriteString(line + "\n")
			if m := addressLine.FindStringSubmatch(line); m != nil {
				address = m[1]
			}
			if m := emulatorLine.FindStringSubmatch(line); m != nil {
				url = m[1]
			}
			if address != "" && url != "" {
				ready <- [2]string{address, url}
				address = ""
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	select {
	case found := <-ready:
		broker.address, broker.controlPlaneURL = found[0], found[1]
		broker.emulatorRoot = strings.TrimSuffix(found[1], "/backend-api")
		return stop, nil
	case <-exited:
		return nil, fmt.Errorf("the broker exited before it started:\n%s", output.String())
	case <-time.After(startTimeout):
		stop()
		return nil, fmt.Errorf("the broker did not start within %s", startTimeout)
	}
}

func TestMain(m *testing.M) {
	stop, err := startBroker()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The examples (example_test.go) read the addresses as a worker would, from its environment.
	_ = os.Setenv("BROKER_ADDRESS", broker.address)
	_ = os.Setenv("CONTROLPLANE_URL", broker.controlPlaneURL)
	code := m.Run()
	stop()
	os.Exit(code)
}

func dial(t *testing.T) *credentialbroker.Client {
	t.Helper()
	client, err := credentialbroker.Dial(broker.address, credentialbroker.WithTimeout(callTimeout))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func callContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

type protectedAnswer struct {
	Scheme string `json:"scheme"`
	TaskID string `json:"task_id"`
	Reason string `json:"reason"`
}

// callProtected calls the emulator's protected endpoint with auth's headers.
func callProtected(t *testing.T, auth *credentialbroker.Authorization) (int, protectedAnswer) {
	t.Helper()
	req, err := http.NewRequestWithContext(callContext(t), http.MethodGet, broker.controlPlaneURL+"/protected", nil)
	if err != nil {
		t.Fatal(err)
	}
	auth.Apply(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer protectedAnswer
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, answer
}

func revoke(t *testing.T, taskID string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"task_id": taskID})
	req, err := http.NewRequestWithContext(callContext(t), http.MethodPost,
		broker.emulatorRoot+"/_emulator/revoke", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %s", resp.Status)
	}
}

func TestHeaderIsAcceptedByTheControlPlane(t *testing.T) {
	auth, err := dial(t).GetAuthorization(callContext(t), credentialbroker.Request{})
	if err != nil {
		t.Fatal(err)
	}

	status, answer := callProtected(t, auth)

	if status != http.StatusOK || answer.Scheme != "AgentAssertion" || answer.TaskID != auth.TaskID {
		t.Fatalf("protected call: %d %+v for %s", status, answer, auth)
	}
	if auth.Scheme != "AgentAssertion" || auth.TaskKind != "background" || auth.FallbackReason != "none" {
		t.Fatalf("unexpected header facts: %s", auth)
	}
	if auth.Headers["ChatGPT-Account-ID"] != "acct-dev" || !auth.ExpiresAt.After(time.Now()) {
		t.Fatalf("companions %v, expires %s", auth.Headers, auth.ExpiresAt)
	}
	if strings.Contains(fmt.Sprint(auth), auth.HeaderValue) {
		t.Fatal("String() leaks the header value")
	}
}

func TestThreadAndBearerOnly(t *testing.T) {
	client := dial(t)
	thread, err := client.GetAuthorization(callContext(t), credentialbroker.Request{ThreadID: "go-thread"})
	if err != nil {
		t.Fatal(err)
	}
	bearer, err := client.GetAuthorization(callContext(t), credentialbroker.Request{BearerOnly: true})
	if err != nil {
		t.Fatal(err)
	}

	if thread.TaskKind != "thread" || thread.ThreadID != "go-thread" {
		t.Fatalf("thread header: %s", thread)
	}
	if bearer.Scheme != "Bearer" || bearer.FallbackReason != "requested" {
		t.Fatalf("bearer header: %s", bearer)
	}
	for _, auth := range []*credentialbroker.Authorization{thread, bearer} {
		if status, answer := callProtected(t, auth); status != http.StatusOK {
			t.Fatalf("protected call with %s: %d %+v", auth, status, answer)
		}
	}
}

func TestRecoversFromA401WithOneReport(t *testing.T) {
	client := dial(t)
	auth, err := client.GetAuthorization(callContext(t), credentialbroker.Request{ThreadID: "go-401"})
	if err != nil {
		t.Fatal(err)
	}
	revoke(t, auth.TaskID)
	status, answer := callProtected(t, auth)
	if status != http.StatusUnauthorized || answer.Reason != "task_revoked" {
		t.Fatalf("expected a 401 task_revoked, got %d %+v", status, answer)
	}

	replacement, err := client.ReportRejection(callContext(t), auth, status)
	if err != nil {
		t.Fatal(err)
	}

	if replacement.TaskID == auth.TaskID || replacement.ThreadID != "go-401" {
		t.Fatalf("replacement %s for %s", replacement, auth)
	}
	if status, answer := callProtected(t, replacement); status != http.StatusOK {
		t.Fatalf("protected call with the replacement: %d %+v", status, answer)
	}
}

var errSeenReplacement = errors.New("seen the replacement")

func TestWatchPushesTheReplacement(t *testing.T) {
	client := dial(t)
	ctx := callContext(t)
	var seen []*credentialbroker.Authorization

	err := client.Watch(ctx, credentialbroker.Request{ThreadID: "go-watch"}, func(auth *credentialbroker.Authorization) error {
		seen = append(seen, auth)
		if len(seen) == 1 {
			revoke(t, auth.TaskID)
			_, err := client.ReportRejection(ctx, auth, http.StatusUnauthorized)
			return err
		}
		if auth.TaskID != seen[0].TaskID {
			return errSeenReplacement
		}
		return nil
	})

	if !errors.Is(err, errSeenReplacement) {
		t.Fatalf("watch ended with %v after %d headers", err, len(seen))
	}
}

func TestWatchEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(callContext(t))
	count := 0

	err := dial(t).Watch(ctx, credentialbroker.Request{}, func(*credentialbroker.Authorization) error {
		count++
		cancel()
		return nil
	})

	if err != nil || count != 1 {
		t.Fatalf("watch returned %v after %d headers", err, count)
	}
}

func TestErrorsCarryCodeAndReason(t *testing.T) {
	client := dial(t)
	cases := []struct {
		request credentialbroker.Request
		code    codes.Code
		reason  string
	}{
		{credentialbroker.Request{ThreadID: "has whitespace"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{credentialbroker.Request{Identity: "nobody"}, codes.NotFound, "UNKNOWN_IDENTITY"},
	}
	for _, c := range cases {
		_, err := client.GetAuthorization(callContext(t), c.request)
		var failure *credentialbroker.Error
		if !errors.As(err, &failure) || failure.Code != c.code || failure.Reason != c.reason || failure.Retryable() {
			t.Fatalf("%+v: got %v (%+v)", c.request, err, failure)
		}
	}
}

func TestUnreachableBrokerIsRetryable(t *testing.T) {
	client, err := credentialbroker.Dial("127.0.0.1:1", credentialbroker.WithTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	_, err = client.GetAuthorization(context.Background(), credentialbroker.Request{})

	var failure *credentialbroker.Error
	if !errors.As(err, &failure) || !failure.Retryable() {
		t.Fatalf("expected a retryable error, got %v", err)
	}
}

func injectFault(t *testing.T, fault map[string]any) {
	t.Helper()
	body, _ := json.Marshal(fault)
	req, err := http.NewRequestWithContext(callContext(t), http.MethodPost,
		broker.emulatorRoot+"/_emulator/faults", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("inject fault: %s", resp.Status)
	}
}

func TestTransportRecoversFromA401(t *testing.T) {
	client := dial(t)
	request := credentialbroker.Request{ThreadID: "go-transport"}
	auth, err := client.GetAuthorization(callContext(t), request)
	if err != nil {
		t.Fatal(err)
	}
	revoke(t, auth.TaskID)
	httpClient := &http.Client{Transport: client.Transport(request), Timeout: callTimeout}

	resp, err := httpClient.Post(broker.controlPlaneURL+"/protected", "application/json", strings.NewReader(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer protectedAnswer
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		t.Fatal(err)
	}

	if resp.StatusCode != http.StatusOK || answer.TaskID == auth.TaskID || answer.TaskID == "" {
		t.Fatalf("after the retry: %d %+v (revoked task %s)", resp.StatusCode, answer, auth.TaskID)
	}
}

func TestTransportReturnsASecondRefusal(t *testing.T) {
	injectFault(t, map[string]any{"endpoint": "protected", "status": 401, "count": 2})
	httpClient := &http.Client{Transport: dial(t).Transport(credentialbroker.Request{}), Timeout: callTimeout}

	resp, err := httpClient.Get(broker.controlPlaneURL + "/protected")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("expected the second 401 to be returned, got %s", resp.Status)
	}
}

package credentialbroker_test

import (
	"fmt"
	"log"
	"net/http"
	"os"

	credentialbroker "credential-broker/clients/go"
)

// A complete worker (README.md shows it): every request to the control plane carries the broker's
// header and companions; a 401 is reported once and the request retried once with the replacement.
func Example_worker() {
	broker, err := credentialbroker.Dial(os.Getenv("BROKER_ADDRESS"))
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	client := &http.Client{Transport: broker.Transport(credentialbroker.Request{ThreadID: "thread-42"})}
	resp, err := client.Get(os.Getenv("CONTROLPLANE_URL") + "/protected")
	if err != nil {
		log.Fatal(err) // the broker or the control plane cannot be reached
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status) // a second 401 would arrive here as it is
	// Output: 200 OK
}

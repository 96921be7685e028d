module credential-broker/clients/go

go 1.19

// The versions Debian 12 packages (golang-google-grpc-dev, golang-google-protobuf-dev). The Makefile
// builds and tests this module offline in GOPATH mode against exactly those sources
// (scripts/go-offline; README.md), so there is no go.sum here: with a module proxy, `go mod tidy`
// completes it.
require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

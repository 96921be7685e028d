"""The gRPC transport: servicers, interceptors, status mapping and server assembly."""

"""``make bench``: the broker's warm ``GetAuthorization`` against the bare stack and its own stack.

One run starts a throw-away ``redis-server`` and five servers, each in its own process: a bare
grpc.aio + uvloop server answering fixed bytes (no broker code: the ceiling of any gRPC service on
this stack), an echo on the broker's own stack (interceptor, caller gate, logging, health,
reflection; only ``GetAuthorization``'s work replaced), and the real broker (wired to the
control-plane emulator) on the embedded store without callers, with a token-authenticated caller,
and on the Redis store. It drives them in turn with ``h2load`` speaking gRPC over h2c and reports
throughput, p50/p99 latency and server CPU per request, the ratios broker/bare and
broker/stack-echo, and proof that the warm path makes no Redis round trip and no signature per
request (Redis ``INFO commandstats`` and the broker's own counters).

Modules: :mod:`bench.payload` (wire bytes), :mod:`bench.serve_bare`, :mod:`bench.serve_echo` and
:mod:`bench.serve_broker` (the server processes), :mod:`bench.processes` (starting and stopping them
and Redis), :mod:`bench.client` (sanity calls, warm-up), :mod:`bench.h2load` (the load generator),
:mod:`bench.runner` (the rounds), :mod:`bench.model` and :mod:`bench.report` (the figures).
"""

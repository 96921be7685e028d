"""``make bench``: the broker's warm ``GetAuthorization`` path against an echo server on one stack.

One run starts a throw-away ``redis-server``, the real broker (wired to the control-plane emulator)
and an echo server that is the same broker process with only ``GetAuthorization`` replaced, each in
its own process, and drives them alternately with ``h2load`` speaking gRPC over h2c. It reports the
throughput ratio broker/echo, the broker's latency, the servers' CPU time per request, and proof
that the warm path makes no Redis round trip and no signature per request (Redis ``INFO
commandstats`` and the broker's own counters).

Modules: :mod:`bench.payload` (wire bytes), :mod:`bench.serve_broker` and :mod:`bench.serve_echo`
(the server processes), :mod:`bench.processes` (starting and stopping them and Redis),
:mod:`bench.client` (sanity calls, warm-up), :mod:`bench.h2load` (the load generator),
:mod:`bench.runner` (the rounds), :mod:`bench.model` and :mod:`bench.report` (the figures).
"""

"""Transports: how workers and operators reach the broker.

* :mod:`broker.transport.grpc`: the worker and admin API (``server.build_server`` assembles it);
* :mod:`broker.transport.ops`: the ops HTTP listener (``/metrics``, ``/healthz``, ``/readyz``).
"""

"""Adapters: the outside world (Redis, HTTP, time, key encryption) behind the core's ports.

Public surface, by module: ``store`` (the Redis and embedded stores, ``make_redis_client``),
``controlplane`` (the control-plane HTTP client), ``oauth``, ``bearer``, ``identity_sources``,
``sealing`` (the key-encryption key), ``clock``, ``watched_file``, ``body_limit`` and
``memory_controlplane`` (an in-memory control plane for socket-free tests). Modules whose names
start with ``_`` belong to their package only.
"""

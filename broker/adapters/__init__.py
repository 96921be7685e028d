"""Adapters: the outside world (Redis, HTTP, time, key encryption) behind the core's ports."""

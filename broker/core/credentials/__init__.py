"""Credential decisions: which identity, which task, cached or minted, assertion or Bearer and why.

Public surface, by module: ``authorizer`` (:class:`Authorizer`, the one entry point of the
transports), ``admin`` (operator operations), ``model`` (the records and answers), ``spec``
(an identity's configuration and the protocol shapes' rules), ``ports`` (what the adapters
implement), ``counters``, ``account`` (the fleet's OAuth login), ``identity``, ``tasks``,
``circuit``, ``fallback``, ``singleflight``, ``waiting`` and ``watch`` (the parts the authorizer is
built from, also built directly by ``broker.app`` and tests).
"""

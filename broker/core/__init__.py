"""The broker's core: pure protocol functions and the credential decisions.

It imports nothing from grpc, redis or httpx; the outside world reaches it through the ports in
:mod:`broker.core.credentials.ports`. Public surface:

* :mod:`broker.core.protocol`: the agent-identity protocol as pure functions;
* :mod:`broker.core.credentials`: the decisions (``Authorizer`` and what it is built from);
* :mod:`broker.core.callers`: caller policies and the registry that authenticates them.
"""

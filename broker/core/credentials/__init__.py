"""Credential decisions: which identity, which task, cached or minted, assertion or Bearer and why."""

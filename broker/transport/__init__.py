"""Transports: how workers reach the credential core."""

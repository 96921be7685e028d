"""The broker's core: pure protocol functions and the credential decisions."""

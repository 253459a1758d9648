"""What the demos and tests use in place of the internet: a slow web site on 127.0.0.1."""

from .slowserver import SlowServer

__all__ = ["SlowServer"]

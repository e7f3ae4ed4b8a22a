"""The development sandbox: a local stand-in for the ModelGates video API.

Not ModelGates, and never used unless asked for (``webhook-service sandbox``, the
demo, the tests, the benchmarks).  It listens on loopback only and calls back
loopback addresses only.
"""

from .server import SandboxServer
from .state import SandboxSettings

__all__ = ["SandboxServer", "SandboxSettings"]

"""The development sandbox: a local stand-in for the ModelGates video API, not ModelGates.

Never used unless asked for (``webhook-service sandbox``, the demo, the tests, the
benchmarks).  It listens on loopback only and calls back loopback addresses only.
"""

from .server import SandboxServer
from .settings import SandboxSettings

__all__ = ["SandboxServer", "SandboxSettings"]

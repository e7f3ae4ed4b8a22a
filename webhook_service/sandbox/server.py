"""The sandbox upstream: a development stand-in for the ModelGates video API, not ModelGates.

``SandboxServer`` is a real HTTP server on loopback that answers like ModelGates
(202 on submit, statuses on a movable clock, the error envelope, per-model
capability checks, content by index with ranges, signed callbacks) and misbehaves
on purpose through ``SandboxSettings``, a fault queue and per-job overrides in
``provider.options.sandbox.parameters``.  Tests, the demo and the benchmarks use
it; it only binds to and calls loopback addresses.

    with SandboxServer(settings=SandboxSettings(pending_seconds=0)) as upstream:
        ...  # MODELGATES_BASE_URL=upstream.base_url, key "sandbox-key"
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from .admin import job_details, list_jobs
from .callbacks import CallbackDispatcher
from .handler import SandboxHTTPServer
from .loopback import is_loopback_host
from .settings import SandboxSettings
from .state import SandboxState

__all__ = ["SandboxServer", "SandboxSettings"]


class SandboxServer:
    """The development sandbox; bound on construction, serving after ``start()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sandbox-key",
        webhook_secret: str = "sandbox-secret",
        settings: SandboxSettings | None = None,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the sandbox only listens on loopback addresses, not {host!r}")
        settings = settings if settings is not None else SandboxSettings()
        settings.update(settings.as_dict())  # refuse bad values before binding
        self.state = SandboxState(settings)
        bind_host = "127.0.0.1" if host == "localhost" else host.strip("[]")
        self._http = SandboxHTTPServer((bind_host, port), self.state, api_key)
        self._callbacks = CallbackDispatcher(self.state, webhook_secret, self.base_url)
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False

    def __repr__(self) -> str:
        return f"SandboxServer({self.base_url!r})"

    @property
    def port(self) -> int:
        """Return the port the server listens on."""
        return self._http.server_port

    @property
    def base_url(self) -> str:
        """Return the API base URL to use as MODELGATES_BASE_URL."""
        return self._http.base_url

    @property
    def settings(self) -> SandboxSettings:
        """Return the live settings; changes apply to the next request."""
        return self.state.settings

    def start(self) -> SandboxServer:
        """Serve in a background daemon thread and return self."""
        self._callbacks.start()
        self._serving = True
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` is called from another."""
        self._callbacks.start()
        self._serving = True
        self._http.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving and delivering callbacks; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._serving:
            self._http.shutdown()
        if self._thread is not None:
            self._thread.join(5)
        self._http.server_close()
        self._callbacks.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def jobs(self) -> list[dict[str, Any]]:
        """Return the admin view of every job (without output digests)."""
        return list_jobs(self.state, self.base_url)

    def job(self, job_id: str) -> dict[str, Any]:
        """Return the admin view of one job, with output digests (KeyError if unknown)."""
        self.state.job(job_id)
        return job_details(self.state, self.base_url, job_id)

    def stats(self) -> dict[str, Any]:
        """Return the request, callback and injected-fault counters."""
        return self.state.stats()

    def expected_sha256(self, job_id: str, index: int) -> str:
        """Return the SHA-256 of what output ``index`` of ``job_id`` serves."""
        return self.state.job(job_id).output(index).sha256()

    def add_fault(
        self,
        endpoint: str,
        status: int | None = None,
        count: int = 1,
        retry_after: int | None = None,
        after_create: bool = False,
        hang_seconds: float = 0.0,
        truncate_at: int | None = None,
    ) -> dict[str, Any]:
        """Queue a scripted answer for the next ``count`` requests to ``endpoint``."""
        fault = self.state.add_fault(
            endpoint=endpoint,
            status=status,
            count=count,
            retry_after=retry_after,
            after_create=after_create,
            hang_seconds=hang_seconds,
            truncate_at=truncate_at,
        )
        return asdict(fault)

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock forward by ``seconds``."""
        self.state.advance(seconds)

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        """Apply a checked partial settings update and return all settings."""
        return self.state.update_settings(changes)

    def reset(self) -> None:
        """Forget jobs, faults, stats and clock moves; restore the starting settings."""
        self.state.reset()

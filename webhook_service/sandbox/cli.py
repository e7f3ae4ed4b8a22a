"""`webhook-service sandbox`: run the development stand-in for ModelGates."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import fields
from types import FrameType
from typing import Any, TypeVar

import click

from .server import SandboxServer
from .state import SandboxSettings

F = TypeVar("F", bound=Callable[..., Any])

KNOB_HELP = {
    "pending_seconds": "Seconds a job stays pending.",
    "in_progress_seconds": "Seconds a job stays in_progress before its outcome.",
    "content_size": "Bytes per output (0 serves a small real MP4).",
    "error_rate": "Share of API requests answered with an injected 429/500.",
    "retry_after": "Retry-After seconds sent with 429/503.",
    "drop_callbacks": "Share of jobs whose callback is never sent.",
    "duplicate_callbacks": "Share of callbacks sent twice.",
    "callback_delay_seconds": "Delay before each callback.",
    "reorder_callbacks": "Shuffle callbacks that fall due together.",
    "truncate_downloads": "Share of downloads cut off half way.",
    "range_support": "'206' honours Range requests; 'ignore' answers 200.",
    "callback_attempts": "Delivery attempts per callback.",
    "ca_file": "CA bundle that verifies https:// callback URLs.",
    "require_https_callbacks": "Refuse http:// callback URLs like the real API.",
    "throttle_bytes_per_second": "Serve downloads at most this fast (0: unlimited).",
    "seed": "Random seed for reproducible misbehaviour.",
}


def _knob_options(command: F) -> F:
    for knob in reversed([f for f in fields(SandboxSettings) if f.name in KNOB_HELP]):
        flag = "--" + knob.name.replace("_", "-")
        default = knob.default
        if isinstance(default, bool):
            option = click.option(flag, knob.name, is_flag=True, help=KNOB_HELP[knob.name])
        else:
            kind = {
                "pending_seconds": float,
                "in_progress_seconds": float,
                "error_rate": float,
                "drop_callbacks": float,
                "duplicate_callbacks": float,
                "callback_delay_seconds": float,
                "truncate_downloads": float,
            }.get(knob.name, int if isinstance(default, int) else str)
            option = click.option(
                flag,
                knob.name,
                type=kind,
                default=default,
                show_default=True,
                help=KNOB_HELP[knob.name],
            )
        command = option(command)
    return command


@click.command(
    help="Run the development sandbox — not ModelGates: a local stand-in for the "
    "ModelGates video API, with knobs to make it misbehave. Loopback only."
)
@click.option("--port", default=8090, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address.")
@click.option(
    "--api-key",
    envvar="SANDBOX_API_KEY",
    default="sandbox-key",
    show_default=True,
    help="Bearer key the sandbox accepts (env SANDBOX_API_KEY).",
)
@click.option(
    "--webhook-secret",
    envvar="SANDBOX_WEBHOOK_SECRET",
    default="sandbox-secret",
    show_default=True,
    help="Secret that signs callbacks (env SANDBOX_WEBHOOK_SECRET).",
)
@_knob_options
def sandbox_command(
    port: int, host: str, api_key: str, webhook_secret: str, **knobs: object
) -> None:
    try:
        server = SandboxServer(host, port, api_key, webhook_secret, SandboxSettings(**knobs))  # type: ignore[arg-type]
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"development sandbox — not ModelGates — listening on {server.base_url}")
    click.echo(
        f"  MODELGATES_BASE_URL={server.base_url}  MODELGATES_API_KEY={api_key}  "
        f"MODELGATES_WEBHOOK_SECRETS={webhook_secret}"
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()

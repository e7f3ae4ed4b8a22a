"""``webhook-service sandbox``: run the development sandbox (not ModelGates) on loopback.

Every ``SandboxSettings`` knob is an option, built from the field's metadata so the
two cannot drift apart.  SIGINT and SIGTERM stop the server cleanly (exit 0).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import Field, fields
from types import FrameType
from typing import Any, TypeVar

import click

from .loopback import is_loopback_host
from .server import SandboxServer
from .settings import RANGE_MODES, SandboxSettings

BANNER = "development sandbox — not ModelGates"
F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = SandboxSettings().as_dict()
_TYPES: dict[str, Any] = {
    "seconds": click.FloatRange(min=0),
    "share": click.FloatRange(0, 1),
    "size": click.IntRange(min=0),
    "attempts": click.IntRange(min=1),
    "statuses": str,
    "range": click.Choice(RANGE_MODES),
    "path": click.Path(exists=True, dir_okay=False),
    "seed": int,
}


def _parse_statuses(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("give HTTP statuses separated by commas, e.g. 429,500") from None


def _knob_option(knob: Field[Any]) -> Callable[[F], F]:
    flag = "--" + knob.name.replace("_", "-")
    kind, help_text = knob.metadata["kind"], knob.metadata["help"]
    default = _DEFAULTS[knob.name]
    if kind == "flag":
        return click.option(
            f"{flag}/--no-{flag[2:]}", knob.name, default=default, show_default=True, help=help_text
        )
    if kind == "statuses":
        default = ",".join(str(status) for status in default)
    return click.option(
        flag,
        knob.name,
        type=_TYPES[kind],
        default=default,
        show_default=default is not None,
        callback=_parse_statuses if kind == "statuses" else None,
        help=help_text,
    )


def _knob_options(command: F) -> F:
    for knob in reversed(fields(SandboxSettings)):
        command = _knob_option(knob)(command)
    return command


@click.command(
    help=(
        f"Run the {BANNER}: a local stand-in for the ModelGates video API for tests, "
        "demos and benchmarks, with knobs to make it misbehave. It listens on loopback "
        "only and sends callbacks to loopback addresses only. Admin endpoints live under "
        "/_sandbox/ (jobs, stats, settings, faults, advance, reset)."
    )
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8090,
    show_default=True,
    help="TCP port to listen on (0 picks a free one).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind: 127.0.0.0/8, ::1 or localhost only.",
)
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
@click.option("--verbose", "-v", is_flag=True, help="Log every request.")
@_knob_options
def sandbox_command(
    port: int, host: str, api_key: str, webhook_secret: str, verbose: bool, **knobs: Any
) -> None:
    """Serve the development sandbox until SIGINT or SIGTERM."""
    if not is_loopback_host(host):
        raise click.BadParameter(f"{host!r} is not a loopback address", param_hint="--host")
    settings = SandboxSettings()
    try:
        settings.update(knobs)
        server = SandboxServer(host, port, api_key, webhook_secret, settings)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from None
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__package__).setLevel(logging.DEBUG if verbose else logging.INFO)
    origin = server.base_url.removesuffix("/api/v1")
    click.echo(f"{BANNER}\n  listening on {origin} (admin: {origin}/_sandbox/stats)")
    click.echo(f"  MODELGATES_BASE_URL={server.base_url}")
    click.echo(f"  MODELGATES_API_KEY={api_key}")
    click.echo(f"  MODELGATES_WEBHOOK_SECRETS={webhook_secret}")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("sandbox stopped")

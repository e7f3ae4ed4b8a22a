"""The ``webhook-service`` command: migrations, operator tools, the sandbox."""

from __future__ import annotations

import sys

import click

from .config import ConfigError, load_settings
from .sandbox.cli import sandbox_command
from .store import Store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate webhook_service: ModelGates video jobs that are never lost."""


@cli.command()
def migrate() -> None:
    """Apply pending database migrations (the Procfile's release step)."""
    settings = load_settings()
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_path)
    try:
        applied = store.migrate()
    finally:
        store.close()
    click.echo(f"applied {len(applied)} migration(s) to {settings.database_path}")


cli.add_command(sandbox_command, "sandbox")


def main() -> None:
    """Entry point: run the CLI, turning configuration errors into one line."""
    from dotenv import load_dotenv

    load_dotenv()
    try:
        cli.main(standalone_mode=True)
    except ConfigError as error:
        click.echo(f"webhook-service: configuration error: {error}", err=True)
        sys.exit(2)

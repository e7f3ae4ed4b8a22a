"""Outbound notifications: a signed POST to the client's own app when a job is settled.

- `events`: the pure rules: the event body (`build_event`), Standard Webhooks signing
  (`sign`, `signing_key`), the retry schedule (`next_delay`).
- `delivery`: one attempt over the network (`deliver`), which vets the URL again and
  connects only to the addresses it vetted; the URL rules themselves are in
  `webhook_service.addresses`.

The boundary: a notification URL is chosen by a client, so it is untrusted. Every attempt
re-checks it, pins the connection, follows no redirect, and is bounded by one deadline.
"""

from ..retry_after import parse_retry_after
from .delivery import DEFAULT_TIMEOUT_SECONDS, MAX_ANSWER_BYTES, Attempt, deliver
from .events import (
    MAX_ATTEMPTS,
    SCHEDULE_SECONDS,
    SigningSecretError,
    build_event,
    next_delay,
    sign,
    signing_key,
    webhook_id_for,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_ANSWER_BYTES",
    "MAX_ATTEMPTS",
    "SCHEDULE_SECONDS",
    "Attempt",
    "SigningSecretError",
    "build_event",
    "deliver",
    "next_delay",
    "parse_retry_after",
    "sign",
    "signing_key",
    "webhook_id_for",
]

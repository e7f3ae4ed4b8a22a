"""Strict JSON at the edges: parse outside bodies defensively, emit RFC 8259 only.

`loads` parses a body that came from outside and refuses, with `JSONRefused`,
what would later break the service: text that is not JSON or not UTF-8, nesting
deeper than any real body (before Python's recursion limit turns it into a 500),
lone surrogates and NUL characters (no database engine stores both), and, in
``strict`` mode, numbers no JSON peer can represent (``NaN``, ``Infinity``,
``1e999``, integers past 64 bits).  `StrictJSONProvider` makes every answer
refuse non-finite numbers instead of writing ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 64
MAX_INTEGER = 2**63 - 1


class JSONRefused(ValueError):
    """A body this service will not take; ``path`` names the offending value, if any."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def loads(body: bytes | str, *, strict: bool = True, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``body``; raise JSONRefused saying what is wrong with it.

    ``strict=False`` still refuses bad text and deep nesting but lets numbers
    through as Python parses them (``NaN`` and ``1e999`` become non-finite
    floats): for signed upstream bodies, whose numbers are clamped where read.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        value = json.loads(text, parse_constant=_refuse_constant if strict else None)
    except JSONRefused:
        raise
    except RecursionError:
        raise JSONRefused("The body is nested too deeply.") from None
    except (UnicodeDecodeError, ValueError):
        raise JSONRefused("The body is not JSON.") from None
    if strict or not _plainly_fine(body, text, max_depth):
        _check(value, strict, max_depth)
    return value


def _plainly_fine(body: bytes | str, text: str, max_depth: int) -> bool:
    """Answer whether the text alone proves the walk would find nothing (numbers unchecked).

    Decoded UTF-8 holds no lone surrogate, and a JSON string holds no raw NUL,
    so without a ``\\u`` escape neither can appear; fewer brackets than
    ``max_depth`` bound the nesting.  Signed callbacks take this road.
    """
    return (
        isinstance(body, bytes)
        and "\\u" not in text
        and text.count("{") + text.count("[") < max_depth
    )


def _refuse_constant(name: str) -> None:
    raise JSONRefused(f"{name} is not a JSON value.")


def _check(value: Any, strict: bool, max_depth: int) -> None:
    """Walk the parsed value without recursion, refusing what `loads` promises to."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            if len(path) >= max_depth:
                raise JSONRefused("The body is nested too deeply.")
            for key, inner in item.items():
                _check_text(key, path)
                stack.append((inner, (*path, key)))
        elif isinstance(item, list):
            if len(path) >= max_depth:
                raise JSONRefused("The body is nested too deeply.")
            stack.extend((inner, (*path, str(index))) for index, inner in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, path)
        elif strict and isinstance(item, float) and not math.isfinite(item):
            raise JSONRefused("Number out of range.", _dotted(path))
        elif (
            strict
            and isinstance(item, int)
            and not isinstance(item, bool)
            and abs(item) > MAX_INTEGER
        ):
            raise JSONRefused("Number out of range.", _dotted(path))


def _check_text(text: str, path: tuple[str, ...]) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONRefused("Text is not valid Unicode.", _dotted(path)) from None
    if "\x00" in text:
        raise JSONRefused("Text must not contain NUL characters.", _dotted(path))


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "_schema"


def scrub(value: Any) -> Any:
    """Return a copy of parsed JSON with every non-finite number replaced by None.

    For values passed on from upstream as they came (the model list), which the
    strict provider would otherwise refuse to write.
    """
    try:
        return json.loads(json.dumps(value), parse_constant=lambda _: None)
    except RecursionError:
        raise JSONRefused("The value is nested too deeply.") from None


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing to write ``NaN`` or ``Infinity`` (RFC 8259)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialize ``obj``; raise ValueError on a non-finite number."""
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def init_app(app: Flask) -> None:
    """Make every JSON answer of ``app`` strict RFC 8259."""
    app.json = StrictJSONProvider(app)

"""structlog configuration: one JSON (or console) event per line, secrets redacted.

Call :func:`configure_logging` once at start. Events bound with ``structlog.contextvars`` (the
request id, the model) are merged into every line. Libraries that log through the standard
library (aiohttp's errors, with their tracebacks) are rendered by the same processors, so a
malformed request is one JSON event, not a multi-line traceback. The :class:`SecretRedactor`
processor replaces any registered secret, wherever and however it appears in the rendered line
(as is, JSON- or repr-escaped, URL-encoded), with ``[redacted]``, so a key that leaks into an
exception message or a forwarded header never reaches the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import quote, quote_plus

import structlog

from proxy.config import LogFormat, LogLevel

__all__ = ["SecretRedactor", "configure_logging", "get_logger"]

REDACTED = "[redacted]"
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
"""A ``%XX`` escape as ``urllib.parse.quote`` writes it."""


class SecretRedactor:
    """A structlog processor, run after the renderer, that masks known secret values in the
    rendered line.

    A secret may reach a log line as is, or as a library wrote it into a message (JSON- or
    repr-escaped, URL-encoded), and the renderer then escapes that text once more. Every such
    form is computed once here, so masking a line is one substring search per form; URL-encoded
    forms are matched with their ``%XX`` escapes in either case (``%5C`` and ``%5c``), as a
    client may send them.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: dict[str, None] = {}
        encoded: dict[str, None] = {}
        for secret in filter(None, secrets):
            for form in (secret, _json_escaped(secret), repr(secret)[1:-1]):
                forms.update(dict.fromkeys((form, _json_escaped(form), repr(form)[1:-1])))
            for form in (quote(secret, safe=""), quote_plus(secret)):
                (encoded if "%" in form else forms)[form] = None
        # Longest first, so a form that contains another is masked whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        self._encoded = (
            re.compile("|".join(map(_any_case_escapes, sorted(encoded, key=len, reverse=True))))
            if encoded
            else None
        )

    def __call__(self, _logger: Any, _method: str, line: MutableMapping[str, Any] | str) -> str:
        if not isinstance(line, str):
            raise TypeError("SecretRedactor masks a rendered line: put it after the renderer")
        if self._encoded is not None and "%" in line:
            line = self._encoded.sub(REDACTED, line)
        for form in self._forms:
            if form in line:
                line = line.replace(form, REDACTED)
        return line


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


def _any_case_escapes(encoded: str) -> str:
    """A pattern for URL-encoded text that matches its ``%XX`` escapes in either case."""
    return _ESCAPE.sub(lambda m: f"%(?i:{m.group(1)})", re.escape(encoded))


def configure_logging(
    log_format: LogFormat = "json",
    level: LogLevel = "info",
    secrets: Iterable[str | None] = (),
    **static_fields: str,
) -> None:
    """Route structlog and stdlib logging to stderr, one event per line.

    ``static_fields`` (e.g. ``component="proxy"``) are added to every event.
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp: list[structlog.typing.Processor] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True)
    ]
    if static_fields:
        stamp.append(_StaticFields(static_fields))
    finish: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,
        renderer,
        SecretRedactor(secrets),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *stamp,
            *finish,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                *stamp,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy structlog logger carrying ``module=name``.

    Lazy, so a module-level logger follows :func:`configure_logging` even when it is called
    later. (``logger`` would be the natural key, but structlog reserves that argument name.)
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(module=name)
    return logger


class _StaticFields:
    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in self._fields.items():
            event.setdefault(key, value)
        return event

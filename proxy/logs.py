"""structlog configuration: one JSON (or console) event per line, secrets redacted.

Call :func:`configure_logging` once at start. Events bound with ``structlog.contextvars`` (the
request id, the model) are merged into every line. The :class:`SecretRedactor` processor
replaces any registered secret, wherever it appears in an event, with ``[redacted]``, so a key
that leaks into an exception message or a forwarded header still never reaches the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from proxy.config import LogFormat, LogLevel

__all__ = ["SecretRedactor", "configure_logging", "get_logger"]

REDACTED = "[redacted]"


class SecretRedactor:
    """A structlog processor that masks known secret values in every string of an event."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._secrets:
            for key, value in event.items():
                event[key] = self._redact(value)
        return event

    def redact_text(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted]``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._redact(v) for v in value)
        return value


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
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if static_fields:
        processors.append(_StaticFields(static_fields))
    processors += [
        structlog.processors.format_exc_info,
        SecretRedactor(secrets),
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the stdlib (aiohttp's own errors) go to the same stream, masked
    # too: aiohttp quotes the raw line of a malformed request, which may hold a bearer key.
    logging.basicConfig(stream=sys.stderr, level=max(numeric_level, logging.WARNING), force=True)
    redacting = _RedactingFilter(SecretRedactor(secrets))
    for handler in logging.getLogger().handlers:
        # On the handler: a filter on a logger does not see records its children propagate.
        handler.addFilter(redacting)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy structlog logger carrying ``module=name``.

    Lazy, so a module-level logger follows :func:`configure_logging` even when it is called
    later. (``logger`` would be the natural key, but structlog reserves that argument name.)
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(module=name)
    return logger


class _RedactingFilter(logging.Filter):
    """Masks secrets in a stdlib record's message, traceback and stack."""

    def __init__(self, redactor: SecretRedactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self._redactor.redact_text
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _StaticFields:
    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in self._fields.items():
            event.setdefault(key, value)
        return event

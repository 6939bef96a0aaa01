"""Short timeouts for the tests' own HTTP clients.

A bug that leaves a request unanswered then fails its test at the call that waits, with a
``TimeoutError`` there, instead of hanging until pytest's limit (120 s): left to their defaults,
aiohttp waits 300 s, the ``openai`` client 600 s (and retries) and the ``ollama`` client for ever.
"""

from __future__ import annotations

import aiohttp

__all__ = ["CLIENT_TIMEOUT", "CLIENT_TIMEOUT_SECONDS"]

CLIENT_TIMEOUT_SECONDS = 30.0
"""The longest one request of a test may take (seconds): far above what any takes here, even
with the machine busy, and far below pytest's limit. For ``openai`` and ``ollama`` clients
(``timeout=``)."""

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_SECONDS)
"""The same for ``aiohttp.ClientSession(timeout=...)``."""

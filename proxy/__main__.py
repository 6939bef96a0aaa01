"""The command line: ``python -m proxy`` (console script ``ollama-proxy``).

* ``serve``: run the proxy and supervise ``ollama serve`` until SIGTERM/SIGINT.
* ``pull``: start Ollama, pull the configured models, stop; exit 0 iff all are present
  (bakes models into an image at build time).
* ``check [--url URL] [--timeout S]``: ``GET <url>/readyz``; exit 0 iff it answers 200
  (a Docker ``HEALTHCHECK`` with no curl needed). Prints one line.

Exit statuses: 0 success, 1 failure, 2 configuration error (one line on stderr:
``config error: VARIABLE: problem``).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from proxy.config import ConfigError, load_settings

__all__ = ["EXIT_CONFIG_ERROR", "main"]

EXIT_CONFIG_ERROR = 2
DEFAULT_CHECK_TIMEOUT = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            url = args.url or load_settings().local_proxy_url
            return _check(url, args.timeout)
        settings = load_settings()
        from proxy import server  # deferred: `check` stays light

        if args.command == "pull":
            return server.pull(settings)
        return server.run(settings)
    except ConfigError as exc:
        print(f"config error: {exc.variable}: {exc.problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-proxy",
        description="Serve many Ollama models behind one authenticated, OpenAI-compatible proxy.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the proxy and supervise `ollama serve`")
    commands.add_parser("pull", help="pull the configured models, then exit (0 iff all present)")
    check = commands.add_parser("check", help="exit 0 iff the proxy's /readyz answers 200")
    check.add_argument(
        "--url", help="base URL of the proxy (default: http://127.0.0.1:$PROXY_PORT)"
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_CHECK_TIMEOUT,
        help=f"seconds to wait for an answer (default: {DEFAULT_CHECK_TIMEOUT:g})",
    )
    return parser


def _check(base_url: str, timeout: float) -> int:
    url = base_url.rstrip("/") + "/readyz"
    if not url.startswith(("http://", "https://")):
        print(f"not ready: {url}: only http and https URLs are supported")
        return 1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP_PROXY
    try:
        with opener.open(url, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"not ready: {url} unreachable: {reason}")
        return 1
    print(f"{'ready' if status == 200 else 'not ready'} (HTTP {status}): {_summary(raw)}")
    return 0 if status == 200 else 1


def _summary(raw: bytes) -> str:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()[:200] or "empty body"
    if not isinstance(body, dict):
        return str(body)[:200]
    parts = [str(body.get("status", "unknown"))]
    ollama = body.get("ollama")
    if isinstance(ollama, dict):
        reason = f" ({ollama['reason']})" if ollama.get("reason") else ""
        parts.append(f"ollama {ollama.get('state', 'unknown')}{reason}")
    models = body.get("models")
    if isinstance(models, dict):
        states: dict[str, int] = {}
        for info in models.values():
            if isinstance(info, dict):
                key = str(info.get("state", "unknown"))
                states[key] = states.get(key, 0) + 1
        if states:
            parts.append("models " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
        failed = [
            f"{tag}: {info.get('reason')}"
            for tag, info in models.items()
            if isinstance(info, dict) and info.get("state") == "failed"
        ]
        parts.extend(failed)
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

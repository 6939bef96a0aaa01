"""The command line: ``python -m proxy`` (console script ``ollama-proxy``).

* ``serve``: run the proxy and supervise ``ollama serve`` until SIGTERM/SIGINT.
* ``pull``: start Ollama, pull the configured models, stop; exit 0 when all are present
  (bakes models into an image at build time).
* ``check [--url URL] [--timeout S]``: ``GET <url>/readyz``; exit 0 when the instance serves
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
from pathlib import Path

from proxy.config import ConfigError, load_settings
from proxy.state import Readiness

__all__ = ["EXIT_CONFIG_ERROR", "main"]

EXIT_CONFIG_ERROR = 2
DEFAULT_CHECK_TIMEOUT = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "check":
            return _check(
                args.url or settings.local_proxy_url, settings.proxy_api_key, args.timeout
            )
        from proxy import server  # deferred: `check` stays light

        if args.command == "pull":
            return server.pull(settings)
        return server.run(settings)
    except ConfigError as exc:
        print(f"config error: {exc.variable}: {exc.problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _parser() -> argparse.ArgumentParser:
    configured = (
        "Configured by environment variables (OLLAMA_CHAT_MODELS, OLLAMA_EMBEDDING_MODELS, "
        "PROXY_API_KEY, PROXY_PORT, ...: the README's Configuration table)."
    )
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Serve many Ollama models behind one authenticated, OpenAI-compatible proxy. "
        + configured,
        epilog="Exit status: 0 success, 1 failure, 2 a configuration error (one line on stderr "
        "naming the variable).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="run the proxy and its own `ollama serve` until SIGTERM or Ctrl-C",
        description="Start `$OLLAMA_BIN serve` on OLLAMA_INTERNAL_HOST, pull the models it "
        "lacks, and answer on PROXY_HOST:PROXY_PORT until SIGTERM or Ctrl-C. " + configured,
    )
    commands.add_parser(
        "pull",
        help="start Ollama, pull the models it lacks, stop (exit status 0 when all are there)",
        description="Start `$OLLAMA_BIN serve`, pull the configured models it lacks, stop; "
        "exit status 0 when every model is present (the image build bakes models this way).",
    )
    check = commands.add_parser(
        "check",
        help="print `ready` or why not (exit status 0 when the proxy serves)",
        description="GET <url>/readyz and print one line: `ready`, or `not ready (<phase>): "
        "<reason>`; exit status 0 when the proxy serves.",
    )
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


def _prog() -> str:
    """The command as it was typed: ``python -m proxy`` or the ``ollama-proxy`` script."""
    name = Path(sys.argv[0]).name
    return "python -m proxy" if name in ("__main__.py", "-m", "") else name


def _check(base_url: str, api_key: str | None, timeout: float) -> int:
    url = base_url.rstrip("/") + "/readyz"
    if not url.startswith(("http://", "https://")):
        print(f"not ready: {url}: only http and https URLs are supported")
        return 1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP_PROXY
    # With the key, /readyz also says why it is not ready.
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked above
        with opener.open(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url} unreachable: {getattr(exc, 'reason', exc)}")
        return 1
    try:
        readiness = Readiness.from_json(json.loads(raw))
    except ValueError as exc:
        print(f"not ready: {url} answered something else than a readiness document ({exc})")
        return 1
    print(readiness.summary())
    return 0 if readiness.serving else 1


if __name__ == "__main__":
    sys.exit(main())

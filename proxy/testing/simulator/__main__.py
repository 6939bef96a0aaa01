"""Command line: ``ollama-sim serve`` (and ``--version``), shaped like the ``ollama`` CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence

from .config import VERSION
from .server import serve

__all__ = ["main"]

_USAGE = """Ollama simulator: a faithful stand-in for `ollama serve` in tests.

Usage:
  ollama-sim [flags]
  ollama-sim [command]

Available Commands:
  serve       Start ollama

Flags:
  -h, --help      help for ollama-sim
  -v, --version   Show version information
"""


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else ""
    if command in {"", "-h", "--help", "help"}:
        sys.stdout.write(_USAGE)
        return 0
    if command in {"-v", "--version"}:
        sys.stdout.write(f"ollama version is {VERSION}\n")
        return 0
    if command != "serve":
        sys.stderr.write(
            f'Error: unknown command "{command}" for "ollama"\nRun \'ollama --help\' for usage.\n'
        )
        return 1
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(os.environ))


if __name__ == "__main__":
    sys.exit(main())

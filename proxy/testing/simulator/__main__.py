"""Command line: ``ollama-sim serve``, ``--version`` and ``--help``, shaped like the ``ollama`` CLI.

The help names the program as invoked (``argv[0]``'s base name) and lists every variable the
simulator reads, from :func:`~proxy.testing.simulator.config.settings`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .config import VERSION, default_models_dir, settings
from .server import serve

__all__ = ["main"]

_COMMANDS = (
    ("serve", "Start the simulated ollama server"),
    ("help", "Help about any command"),
)
_HELP_FLAGS = {"-h", "--help"}


def _prog() -> str:
    """The program as invoked: ``ollama-sim`` for the console script, the module for ``-m``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name in {"", "-c", "__main__.py"}:
        return f"{Path(sys.executable).name} -m proxy.testing.simulator"
    return name


def _environment(environ: Mapping[str, str]) -> str:
    known = settings()
    width = max(len(s.name) for s in known) + 3
    lines = [f"      {s.name:<{width}}{s.meaning} (default {s.default})" for s in known]
    where = environ.get("OLLAMA_MODELS", "").strip() or default_models_dir(environ)
    return (
        "Environment Variables:\n" + "\n".join(lines) + f"\n\nModels are kept in {where}:\n"
        "$OLLAMA_MODELS, else the simulator's own directory (never a real Ollama's\n"
        "~/.ollama/models, unless OLLAMA_MODELS names it).\n"
    )


def _usage(prog: str, environ: Mapping[str, str]) -> str:
    commands = "\n".join(f"  {name:<12}{what}" for name, what in _COMMANDS)
    return (
        "Ollama simulator: a faithful stand-in for `ollama serve` in tests (fake answers,\n"
        "nothing downloaded).\n\n"
        f"Usage:\n  {prog} [flags]\n  {prog} [command]\n\n"
        f"Available Commands:\n{commands}\n\n"
        f"Flags:\n  -h, --help      help for {prog}\n"
        "  -v, --version   Show version information\n\n"
        f"{_environment(environ)}\n"
        f'Use "{prog} [command] --help" for more information about a command.\n'
    )


def _serve_usage(prog: str, environ: Mapping[str, str]) -> str:
    return (
        "Start the simulated ollama server (fake answers, nothing downloaded)\n\n"
        f"Usage:\n  {prog} serve [flags]\n\n"
        "Flags:\n  -h, --help   help for serve\n\n"
        f"{_environment(environ)}"
    )


def _error(message: str, usage: str) -> int:
    sys.stderr.write(f"Error: {message}\nRun '{usage} --help' for usage.\n")
    return 1


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the program's name in help and errors (default: as invoked, ``argv[0]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog or _prog()
    environ = os.environ
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command in {"", "help", *_HELP_FLAGS}:
        if command == "help" and rest and rest[0] == "serve":
            sys.stdout.write(_serve_usage(prog, environ))
        elif command == "help" and rest:
            sys.stdout.write(f"Unknown help topic [`{rest[0]}`]\n{_usage(prog, environ)}")
        else:
            sys.stdout.write(_usage(prog, environ))
        return 0
    if command in {"-v", "--version"}:
        sys.stdout.write(f"ollama version is {VERSION}\n")
        return 0
    if command.startswith("-"):
        return _error(f"unknown flag: {command}", prog)
    if command != "serve":
        return _error(f'unknown command "{command}" for "{prog}"', prog)
    if _HELP_FLAGS.intersection(rest):
        sys.stdout.write(_serve_usage(prog, environ))
        return 0
    if flags := [arg for arg in rest if arg.startswith("-")]:
        return _error(f"unknown flag: {flags[0]}", f"{prog} serve")
    if rest:
        return _error(f"accepts 0 arg(s), received {len(rest)}", f"{prog} serve")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(environ))


if __name__ == "__main__":
    sys.exit(main())

"""One request process of the emulated UbiOps instance (:mod:`proxy.testing.ubiops_instance`):
the instance's handle on it (:func:`spawn`, :class:`Process`, :func:`end`) and what runs in it.

:func:`spawn` runs ``python -m proxy.testing.ubiops_process FD BASE_DIRECTORY`` in a working
directory of its own and with exactly the environment it is given, and sends the deployment's
context as the first message on the connection ``FD`` (a command line is visible to every user
through ``ps``, and the context's environment variables may hold keys). In there, :func:`main`
loads ``BASE_DIRECTORY/deployment.py`` as UbiOps' agent does (``base_directory`` and
``libraries/`` on ``sys.path``), builds the ``Deployment`` with the arguments its ``__init__``
takes, then serves the requests that arrive on the connection ``FD`` one at a time, passing
``streaming_update`` in the request context. Like UbiOps, it fails a request whose ``request()``
does not return a ``str`` (the output is plain), and shows an exception as its
``public_error_message`` or as a generic message (the traceback goes to the process's stderr).

Messages to the instance: ``("started", t)`` or ``("init_failed", reason)``, then per request
``("update", t, text)``… and ``("done", output, error)``. From it: ``("context", context)`` first,
then ``("request", text, context)`` and ``("stop",)``, after which the deployment's ``stop()``
is called and the process exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = [
    "GENERIC_ERROR",
    "Process",
    "end",
    "load_deployment",
    "main",
    "not_text_error",
    "plain_input",
    "spawn",
]

GENERIC_ERROR = "An exception occurred in the request. See the logs for details."
"""What UbiOps reports for an exception without a ``public_error_message``."""


def plain_input(data: Any) -> str:
    """What a plain-input deployment receives for ``data``: text as is, bytes decoded, anything
    else as its JSON text (what the ``ubiops`` client sends for a dict or list).

    Raises:
        TypeError: ``data`` cannot be sent.
    """
    if isinstance(data, str):
        return data
    if isinstance(data, bytes | bytearray):
        return bytes(data).decode()
    try:
        return json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"plain input must be text or JSON-serialisable: {exc}") from None


class Process:
    """The instance's handle on one request process; a reader thread sorts what it sends."""

    def __init__(self, process_id: int, popen: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process_id = process_id
        self.popen = popen
        self.conn = conn
        self.initialised = threading.Event()
        self.started_at: float | None = None
        self.init_error: str | None = None
        self.inbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.dead = False

    def read(self, on_started: Callable[[Process], None]) -> None:
        """Run in a thread: the process's messages, until it ends."""
        try:
            while True:
                message: tuple[Any, ...] = self.conn.recv()
                if message[0] == "started":
                    self.started_at = message[1]
                    self.initialised.set()
                    on_started(self)
                elif message[0] == "init_failed":
                    self.init_error = message[1]
                    self.initialised.set()
                else:
                    self.inbox.put(message)
        except (EOFError, OSError):
            pass
        finally:
            self.dead = True
            self.initialised.set()
            self.inbox.put(None)

    def describe_death(self) -> str:
        code = self.popen.poll()
        return f"process {self.process_id} died (exit code {code})"


def spawn(
    process_id: int,
    base_directory: Path,
    *,
    workdir: Path,
    env: dict[str, str],
    context: dict[str, Any],
    on_started: Callable[[Process], None],
) -> Process:
    """Start a request process in ``workdir`` with exactly ``env``; ``on_started`` is called
    (from its reader thread) once its ``Deployment`` is built."""
    parent, child = socket.socketpair()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", __name__, str(child.fileno()), str(base_directory)],
            cwd=workdir,
            env=env,
            pass_fds=(child.fileno(),),
        )
    finally:
        child.close()
    process = Process(process_id, popen, Connection(parent.detach()))
    process.conn.send(("context", context))  # not in argv: its environment may hold keys
    threading.Thread(
        target=process.read, args=(on_started,), name=f"ubiops-process-{process_id}", daemon=True
    ).start()
    return process


def end(process: Process, grace: float = 5.0) -> None:
    """End a process: wait ``grace`` for it to exit, then SIGTERM, then SIGKILL."""
    popen = process.popen
    if grace:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        if popen.poll() is not None:
            break
        if grace == 0.0 and sig == signal.SIGTERM:
            continue  # a hung request: no chance to finish it
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(wait)
    with contextlib.suppress(OSError):
        process.conn.close()


def main(argv: Sequence[str]) -> int:
    """Serve as one request process; return the exit status."""
    fd, base_directory = argv
    conn = Connection(int(fd))
    try:
        _, context = conn.recv()
        deployment = load_deployment(Path(base_directory), context)
    except BaseException as exc:  # what UbiOps reports as a failed initialisation
        traceback.print_exc()
        conn.send(("init_failed", f"{type(exc).__name__}: {exc}"))
        return 1
    conn.send(("started", time.monotonic()))
    request = deployment.request
    with_context = _takes_context(request)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return 0
        if message[0] == "stop":
            stop = getattr(deployment, "stop", None)
            if callable(stop):
                try:
                    stop()
                except Exception:
                    traceback.print_exc()
            return 0
        _, data, context = message
        conn.send(("done", *_serve(request, with_context, data, context, conn)))


def _serve(
    request: Callable[..., Any],
    with_context: bool,
    data: str,
    context: dict[str, Any],
    conn: Connection,
) -> tuple[str | None, str | None]:
    """One request: ``(output, None)`` or ``(None, error)``."""

    def streaming_update(text: str) -> None:
        conn.send(("update", time.monotonic(), text))

    context["streaming_update"] = streaming_update
    try:
        output = request(data, context) if with_context else request(data)
    except Exception as exc:
        traceback.print_exc()
        public = getattr(exc, "public_error_message", None)
        return None, str(public) if public else GENERIC_ERROR
    if not isinstance(output, str):
        return None, not_text_error(output)
    return output, None


def not_text_error(output: object) -> str:
    """The error of a request whose ``request()`` returned ``output``, not a string."""
    return f"The deployment returned {type(output).__name__} as its plain output, not a string."


def load_deployment(base_directory: Path, context: dict[str, Any]) -> Any:
    """The ``Deployment`` of ``base_directory/deployment.py``, imported and made as UbiOps does.

    Its ``__init__`` gets the arguments it names (``base_directory``, ``context``) by keyword.
    """
    sys.path[:0] = [str(base_directory), str(base_directory / "libraries")]
    spec = importlib.util.spec_from_file_location("deployment", base_directory / "deployment.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {base_directory / 'deployment.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["deployment"] = module
    spec.loader.exec_module(module)
    cls = module.Deployment
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_all or "base_directory" in params:
        kwargs["base_directory"] = str(base_directory)
    if takes_all or "context" in params:
        kwargs["context"] = context
    return cls(**kwargs)


def _takes_context(method: Callable[..., Any]) -> bool:
    params = list(inspect.signature(method).parameters)
    return "context" in params and len(params) == 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A local stand-in for one UbiOps instance: a deployment package served by N OS processes.

It does what the UbiOps agent does with ``instance_processes=N``: it starts N processes at once
(multiprocessing ``spawn``), each loads ``deployment.py`` by path and builds its own
``Deployment(base_directory, context)`` with ``process_id`` 0..N-1, then hands each request to
a free process (one request per process at a time), passes ``streaming_update`` in the request
context, and on shutdown calls ``stop()`` in every process before ending it. Errors come back the
way UbiOps shows them: the exception's ``public_error_message``, or a generic message.

Example::

    with UbiOpsInstance("deployment_package", processes=3, env={...}) as instance:
        instance.wait_started(timeout=60)
        result = instance.request({"model": "smollm2", "messages": [...], "stream": True})
        for t, text in result.updates:
            ...
"""

from __future__ import annotations

import importlib.util
import inspect
import multiprocessing
import multiprocessing.connection
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

__all__ = ["GENERIC_ERROR", "InstanceError", "RequestResult", "UbiOpsInstance"]

GENERIC_ERROR = "An exception occurred in the request. See the logs for details."
"""What UbiOps reports for an exception without a ``public_error_message``."""

_POLL = 0.2
_STOP_GRACE = 30.0

UpdateCallback = Callable[[float, str], object]


class InstanceError(RuntimeError):
    """The emulated instance failed: a process did not start, died, or timed out."""


@dataclass(slots=True)
class RequestResult:
    """The outcome of one request: ``output`` or ``error``, and the streamed updates.

    ``updates`` holds ``(t, text)`` pairs, ``t`` being ``time.monotonic()`` in the serving process
    when it called ``streaming_update`` (comparable across processes on one machine).
    """

    process_id: int
    output: Any = None
    error: str | None = None
    updates: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Worker:
    """The parent's handle on one request process."""

    def __init__(self, process: BaseProcess, conn: multiprocessing.connection.Connection, pid: int):
        self.process = process
        self.conn = conn
        self.process_id = pid
        self.started = False
        self.started_at: float | None = None
        self.init_error: str | None = None

    def receive(self, deadline: float | None) -> tuple[Any, ...]:
        while True:
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if wait <= 0:
                raise InstanceError(f"process {self.process_id} did not answer in time")
            try:
                if self.conn.poll(wait):
                    message: tuple[Any, ...] = self.conn.recv()
                    return message
            except (EOFError, OSError):
                pass
            else:
                if self.process.is_alive():
                    continue
            raise InstanceError(
                f"process {self.process_id} died (exit code {self.process.exitcode})"
            )


class UbiOpsInstance:
    """N request processes serving one deployment package, as a UbiOps instance runs them.

    Args:
        package_dir: the directory holding ``deployment.py``.
        processes: ``instance_processes``.
        env: environment variables set in every process (on top of this process's environment;
            a value of None removes a variable).
        deployment, version: the names put in the context.
    """

    def __init__(
        self,
        package_dir: str | os.PathLike[str],
        processes: int = 3,
        env: Mapping[str, str | None] | None = None,
        *,
        deployment: str = "ollama-multi-model-server",
        version: str = "v1",
    ) -> None:
        if processes < 1:
            raise ValueError("an instance has at least one process")
        self.package_dir = Path(package_dir).resolve()
        if not (self.package_dir / "deployment.py").is_file():
            raise FileNotFoundError(f"no deployment.py in {self.package_dir}")
        self.processes = processes
        self._env = dict(env or {})
        self._init_context: dict[str, Any] = {
            "project": "local",
            "project_id": "local",
            "deployment": deployment,
            "deployment_id": "local",
            "version": version,
            "version_id": "local",
            "input_type": "plain",
            "output_type": "plain",
            "input_fields": [],
            "output_fields": [],
            "language": "python3.11",
            "environment_variables": {k: v for k, v in self._env.items() if v is not None},
        }
        self._workers: list[_Worker] = []
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._stopped = False

    def __enter__(self) -> UbiOpsInstance:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """The OS pids of the request processes, by ``process_id``."""
        return [w.process.pid or 0 for w in self._workers]

    @property
    def started_at(self) -> list[float]:
        """When each started process finished building its ``Deployment`` (``time.monotonic()``)."""
        return [w.started_at for w in self._workers if w.started_at is not None]

    def start(self) -> None:
        """Start every process at once; each builds its ``Deployment`` in parallel."""
        if self._workers:
            raise RuntimeError("the instance was already started")
        ctx = multiprocessing.get_context("spawn")
        for process_id in range(self.processes):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_serve,
                args=(
                    child,
                    str(self.package_dir),
                    {**self._init_context, "process_id": process_id},
                ),
                kwargs={"env": self._env},
                name=f"ubiops-process-{process_id}",
                daemon=True,
            )
            self._workers.append(_Worker(process, parent, process_id))
        for worker in self._workers:
            worker.process.start()

    def wait_started(self, timeout: float) -> None:
        """Block until every process has built its ``Deployment``.

        Raises:
            InstanceError: a process failed to initialise, died, or is not done in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            if worker.started:
                continue
            message = worker.receive(deadline)
            if message[0] == "init_failed":
                worker.init_error = message[1]
                raise InstanceError(f"process {worker.process_id} failed to start: {message[1]}")
            worker.started, worker.started_at = True, message[1]
            self._idle.put(worker)

    def request(
        self,
        data: Any,
        *,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        request_mode: str = "express",
    ) -> RequestResult:
        """Serve one request on a free process and return its result.

        ``on_update(t, text)`` is called for each streamed update the moment it arrives.

        Raises:
            InstanceError: no process became free, or the serving process died or timed out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            worker = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise InstanceError(f"no process became free within {timeout} s") from None
        try:
            return self._serve_on(worker, data, deadline, on_update, request_mode)
        finally:
            if worker.process.is_alive():
                self._idle.put(worker)

    def batch(self, items: Iterable[Any], *, timeout: float | None = None) -> list[RequestResult]:
        """Serve several requests spread over the free processes; results in input order."""
        items = list(items)
        with ThreadPoolExecutor(max_workers=self.processes) as pool:
            futures = [
                pool.submit(self.request, item, timeout=timeout, request_mode="batch")
                for item in items
            ]
            return [f.result() for f in futures]

    def stop(self, timeout: float = _STOP_GRACE) -> None:
        """Call ``stop()`` in every process (in parallel), then end the processes."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + timeout
        asked: list[_Worker] = []
        for worker in self._workers:
            if worker.started and worker.process.is_alive():
                try:
                    worker.conn.send(("stop",))
                    asked.append(worker)
                except OSError:
                    pass
        for worker in asked:
            try:
                while worker.receive(deadline)[0] != "stopped":
                    pass
            except InstanceError:
                pass
        for worker in self._workers:
            if worker in asked:
                worker.process.join(max(deadline - time.monotonic(), 0.1))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()

    def _serve_on(
        self,
        worker: _Worker,
        data: Any,
        deadline: float | None,
        on_update: UpdateCallback | None,
        request_mode: str,
    ) -> RequestResult:
        result = RequestResult(process_id=worker.process_id, started=time.monotonic())
        context = {"id": str(uuid.uuid4()), "request_mode": request_mode, "user_id": "local"}
        worker.conn.send(("request", data, context))
        while True:
            message = worker.receive(deadline)
            if message[0] == "update":
                _, t, text = message
                result.updates.append((t, text))
                if on_update is not None:
                    on_update(t, text)
                continue
            _, result.output, result.error = message
            result.finished = time.monotonic()
            return result


def _serve(
    conn: multiprocessing.connection.Connection,
    package_dir: str,
    init_context: dict[str, Any],
    env: Mapping[str, str | None],
) -> None:
    """The body of one request process (runs in the spawned child)."""
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        deployment = _load(Path(package_dir), init_context)
    except BaseException as exc:
        traceback.print_exc()
        conn.send(("init_failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("started", time.monotonic()))
    request = deployment.request
    with_context = _takes_context(request)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message[0] == "stop":
            stop = getattr(deployment, "stop", None)
            if callable(stop):
                try:
                    stop()
                except Exception:
                    traceback.print_exc()
            conn.send(("stopped",))
            break
        _, data, context = message

        def streaming_update(text: str) -> None:
            conn.send(("update", time.monotonic(), text))

        context["streaming_update"] = streaming_update
        try:
            output = request(data, context) if with_context else request(data)
        except Exception as exc:
            traceback.print_exc()
            public = getattr(exc, "public_error_message", None)
            conn.send(("done", None, str(public) if public else GENERIC_ERROR))
        else:
            conn.send(("done", output, None))


def _load(package_dir: Path, context: dict[str, Any]) -> Any:
    sys.path[:0] = [str(package_dir), str(package_dir / "libraries")]
    spec = importlib.util.spec_from_file_location("deployment", package_dir / "deployment.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {package_dir / 'deployment.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["deployment"] = module
    spec.loader.exec_module(module)
    cls = module.Deployment
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_all or "base_directory" in params:
        kwargs["base_directory"] = str(package_dir)
    if takes_all or "context" in params:
        kwargs["context"] = context
    return cls(**kwargs)


def _takes_context(method: Callable[..., Any]) -> bool:
    params: Sequence[str] = list(inspect.signature(method).parameters)
    return "context" in params and len(params) == 2

"""A local stand-in for one UbiOps instance: a deployment package served by N OS processes.

It does what the UbiOps agent does with ``instance_processes=N``, and is at least as strict:

* the package is zipped as ``deploy.sh`` uploads it, and the zip is extracted to a fresh
  directory; ``base_directory`` is its ``deployment_package/``;
* each process is a fresh interpreter with only the version's environment variables (those
  given, plus ``PATH``, ``HOME`` and ``LANG``; none of the caller's), in a working directory of
  its own, and builds its own ``Deployment(base_directory, context)`` with ``process_id``;
* no start order is promised: ``start_order`` starts them all at once, process 0 first (the
  others once it initialised) or process 0 last (once the others initialised);
* a process takes requests as soon as its own ``__init__`` returned, one at a time;
* plain input arrives as ``str`` (a dict or list given to :meth:`UbiOpsInstance.request` is sent
  as its JSON text, as the ``ubiops`` client sends it), and ``request()`` must return a ``str``:
  anything else fails the request;
* every request has a timeout (default 300 s, at most 3600 s, as UbiOps' direct requests) that
  includes waiting for a free process; a request past it fails, and its process, which may hang,
  is killed and replaced by a new one with the same ``process_id`` (which initialises again).

``streaming_update`` is passed in the request context; errors come back the way UbiOps shows
them: the exception's ``public_error_message``, or a generic message. On shutdown ``stop()`` is
called in every process before it is ended.

Example::

    with UbiOpsInstance("deployment_package", processes=3, env={...}) as instance:
        instance.wait_started(timeout=60)
        result = instance.request(json.dumps({"model": "smollm2", "messages": [...]}))
        for t, text in result.updates:
            ...
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from proxy.testing import ubiops_process
from proxy.testing.ubiops_process import Process, end, spawn

__all__ = [
    "DEFAULT_TIMEOUT",
    "GENERIC_ERROR",
    "MAX_TIMEOUT",
    "InstanceError",
    "RequestResult",
    "StartOrder",
    "UbiOpsInstance",
    "timeout_error",
]

GENERIC_ERROR = ubiops_process.GENERIC_ERROR
"""What UbiOps reports for an exception without a ``public_error_message``."""
DEFAULT_TIMEOUT = 300.0
"""A direct request's default timeout on UbiOps (seconds), cold start included."""
MAX_TIMEOUT = 3600.0
"""The longest timeout a direct request may have."""

StartOrder = Literal["together", "zero-first", "zero-last"]
UpdateCallback = Callable[[float, str], object]

_STOP_GRACE = 30.0
_PACKAGE_ROOT = "deployment_package"
_BASE_PATH = os.pathsep.join((str(Path(sys.executable).parent), os.defpath))


def timeout_error(timeout: float) -> str:
    """The error of a request that did not finish within ``timeout`` seconds."""
    return f"The request did not finish within its timeout of {timeout:g} s and was aborted."


class InstanceError(RuntimeError):
    """The emulated instance failed: a process did not start, or died."""


@dataclass(slots=True)
class RequestResult:
    """The outcome of one request: ``output`` or ``error``, and the streamed updates.

    ``updates`` holds ``(t, text)`` pairs, ``t`` being ``time.monotonic()`` in the serving process
    when it called ``streaming_update`` (comparable across processes on one machine).
    ``process_id`` is -1 when no process took the request before its timeout.
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


class UbiOpsInstance:
    """N request processes serving one deployment package, as a UbiOps instance runs them.

    Args:
        package_dir: the directory holding ``deployment.py`` (zipped and extracted afresh).
        processes: ``instance_processes``.
        env: the version's environment variables, the only ones the processes get (besides
            ``PATH``, ``HOME`` and ``LANG``); a value of None leaves a variable out.
        deployment, version: the names put in the context.
        start_order: which processes start first (see the module doc).
    """

    def __init__(
        self,
        package_dir: str | os.PathLike[str],
        processes: int = 3,
        env: Mapping[str, str | None] | None = None,
        *,
        deployment: str = "ollama-multi-model-server",
        version: str = "v1",
        start_order: StartOrder = "together",
    ) -> None:
        if processes < 1:
            raise ValueError("an instance has at least one process")
        if start_order not in ("together", "zero-first", "zero-last"):
            raise ValueError(f"unknown start order {start_order!r}")
        self.package_dir = Path(package_dir).resolve()
        if not (self.package_dir / "deployment.py").is_file():
            raise FileNotFoundError(f"no deployment.py in {self.package_dir}")
        self.processes = processes
        self.start_order = start_order
        self._version_env = {k: v for k, v in (env or {}).items() if v is not None}
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
            "language": f"python{sys.version_info.major}.{sys.version_info.minor}",
            "environment_variables": dict(self._version_env),
        }
        self._root: Path | None = None
        self._base_directory: Path | None = None
        self._processes: dict[int, Process] = {}
        self._idle: queue.Queue[Process] = queue.Queue()
        self._lock = threading.Lock()
        self._stopping = False
        self._starter: threading.Thread | None = None

    def __enter__(self) -> UbiOpsInstance:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """The OS pids of the current request processes, by ``process_id`` (0 if not started)."""
        found = self._processes
        return [found[i].popen.pid if i in found else 0 for i in range(self.processes)]

    @property
    def started_at(self) -> list[float]:
        """When each initialised process finished building its ``Deployment`` (monotonic)."""
        found = [self._processes.get(i) for i in range(self.processes)]
        return [p.started_at for p in found if p is not None and p.started_at is not None]

    @property
    def base_directory(self) -> Path | None:
        """Where the package was extracted (``base_directory`` of the processes)."""
        return self._base_directory

    def start(self) -> None:
        """Extract the package and start the processes in :attr:`start_order`."""
        if self._root is not None:
            raise RuntimeError("the instance was already started")
        self._root = Path(tempfile.mkdtemp(prefix="ubiops-instance-"))
        self._base_directory = _extract(self.package_dir, self._root)
        (self._root / "home").mkdir()
        order = list(range(self.processes))
        if self.start_order == "together":
            first, rest = order, []
        elif self.start_order == "zero-first":
            first, rest = order[:1], order[1:]
        else:
            first, rest = order[1:] or order, order[:1] if self.processes > 1 else []
        for process_id in first:
            self._spawn(process_id)
        if rest:
            self._starter = threading.Thread(
                target=self._start_rest, args=(first, rest), name="ubiops-starter", daemon=True
            )
            self._starter.start()

    def wait_started(self, timeout: float) -> None:
        """Block until every process has built its ``Deployment``.

        Raises:
            InstanceError: a process failed to initialise, died, or is not done in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        for process_id in range(self.processes):
            while process_id not in self._processes:
                if time.monotonic() >= deadline:
                    raise InstanceError(f"process {process_id} was not started in time")
                time.sleep(0.01)
            process = self._processes[process_id]
            if not process.initialised.wait(max(deadline - time.monotonic(), 0)):
                raise InstanceError(f"process {process_id} did not initialise in time")
            if process.init_error is not None:
                raise InstanceError(f"process {process_id} failed to start: {process.init_error}")
            if process.started_at is None:
                raise InstanceError(process.describe_death())

    def request(
        self,
        data: Any,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_update: UpdateCallback | None = None,
        request_mode: str = "express",
    ) -> RequestResult:
        """Serve one request on a free process and return its result.

        ``data`` is the plain input: text, or a dict or list (sent as its JSON text). The
        ``timeout`` includes waiting for a free process; past it the result is an error and the
        serving process is replaced. ``on_update(t, text)`` is called for each streamed update
        the moment it arrives.

        Raises:
            InstanceError: the serving process died.
            ValueError: the timeout is not within (0, 3600] seconds.
        """
        if not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"a request's timeout is at most {MAX_TIMEOUT:g} s, not {timeout}")
        text = ubiops_process.plain_input(data)
        started = time.monotonic()
        deadline = started + timeout
        try:
            process = self._idle.get(timeout=timeout)
        except queue.Empty:
            return RequestResult(
                -1, error=timeout_error(timeout), started=started, finished=deadline
            )
        result = RequestResult(process_id=process.process_id, started=started)
        context = {"id": str(uuid.uuid4()), "request_mode": request_mode, "user_id": "local"}
        try:
            process.conn.send(("request", text, context))
        except OSError:
            raise InstanceError(process.describe_death()) from None
        while True:
            try:
                message = process.inbox.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                result.error, result.finished = timeout_error(timeout), time.monotonic()
                self._replace(process)
                return result
            if message is None:
                raise InstanceError(process.describe_death())
            if message[0] == "update":
                _, t, update = message
                result.updates.append((t, update))
                if on_update is not None:
                    on_update(t, update)
                continue
            _, result.output, result.error = message
            result.finished = time.monotonic()
            self._idle.put(process)
            return result

    def batch(
        self, items: Iterable[Any], *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[RequestResult]:
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
            if self._stopping:
                return
            self._stopping = True
        if self._starter is not None:
            self._starter.join(timeout)
        deadline = time.monotonic() + timeout
        processes = list(self._processes.values())
        asked = []
        for process in processes:
            if process.started_at is not None and not process.dead:
                with contextlib.suppress(OSError):
                    process.conn.send(("stop",))
                    asked.append(process)
        for process in asked:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(max(deadline - time.monotonic(), 0.1))
        for process in processes:
            end(process)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def _spawn(self, process_id: int) -> None:
        root, base_directory = self._root, self._base_directory
        assert root is not None
        assert base_directory is not None
        process = spawn(
            process_id,
            base_directory,
            workdir=Path(tempfile.mkdtemp(prefix=f"process-{process_id}-", dir=root)),
            env={"PATH": _BASE_PATH, "HOME": str(root / "home"), "LANG": "C.UTF-8"}
            | self._version_env,
            context={**self._init_context, "process_id": process_id},
            on_started=self._ready,
        )
        self._processes[process_id] = process

    def _ready(self, process: Process) -> None:
        if not self._stopping:
            self._idle.put(process)

    def _start_rest(self, first: list[int], rest: list[int]) -> None:
        for process_id in first:
            self._processes[process_id].initialised.wait()
        for process_id in rest:
            if self._stopping:
                return
            self._spawn(process_id)

    def _replace(self, process: Process) -> None:
        """Kill a process whose request timed out and start a new one in its place."""
        end(process, grace=0.0)
        if not self._stopping:
            self._spawn(process.process_id)


def _extract(package_dir: Path, root: Path) -> Path:
    """Zip ``package_dir`` as ``deploy.sh`` uploads it, extract it under ``root``; return the
    extracted ``deployment_package`` directory."""
    from proxy.deploy.package import write_package_zip

    archive = root / "deployment_package.zip"
    write_package_zip(package_dir, archive)
    target = root / "package"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
        for member in zipped.infolist():
            mode = member.external_attr >> 16
            if mode:
                (target / member.filename).chmod(mode & 0o777)
    return target / _PACKAGE_ROOT

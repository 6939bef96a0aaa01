"""The load generator: an async aiohttp client in a process of its own.

Run as ``python -m bench.loadgen``; the parent (:class:`LoadGen`) sends one JSON job per line on
stdin and reads one JSON result per line from stdout. Keeping the client out of the parent and
out of the proxy means its CPU shows up nowhere but in its own figure (``loadgen_cpu_pct``),
which every job reports so a reader can see it was not the bottleneck.

Jobs (``op``):

``latency``
    Concurrency 1, one keep-alive connection per target, requests alternated between the targets
    (ABBA order) so both see the same machine at the same moment. Per-request wall times in ms.
``saturate``
    ``concurrency`` closed-loop workers against one target for ``warmup_s + duration_s``; counts
    requests finished and SSE chunks received inside the window, and the CPU seconds that the
    watched processes (``watch_pids``: the proxy, say) spent inside that same window.
``streams``
    ``concurrency`` streaming workers whose first starts are spread over ``spread_s``; each
    streams back to back. Counts chunks received in the window ``[spread_s, spread_s +
    duration_s]``, time to first chunk per stream and, with ``verify``, a digest of each
    completed stream's content (chunk order included) per worker, for comparison across targets.
``stream_latency``
    Concurrency 1, one keep-alive connection per target, streamed requests alternated between
    the targets (ABBA) as in ``latency``. Per stream: time to first chunk, total time, the SSE
    chunks, the decode rate (chunks after the first per second between the first and the last)
    and a digest of the content, so targets that should stream the same text can be compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import select
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadGen", "LoadGenError"]

_SSE_END = b"\n\n"
_DONE = b"[DONE]"
_RSS_EVERY = 0.05


class LoadGenError(RuntimeError):
    """The load generator failed a job, died, or did not answer in time."""


# --------------------------------------------------------------------------- parent side


class LoadGen:
    """The parent's handle on a load generator process (start it with ``with LoadGen() as lg``).

    :meth:`run` blocks until the job's result arrives or ``timeout`` passes.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def __enter__(self) -> LoadGen:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self._require().pid

    def start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.run({"op": "ping"}, timeout=30)

    def run(self, job: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        """Send ``job`` and return its result.

        Raises:
            LoadGenError: the job failed (its message), the process died, or ``timeout`` passed.
        """
        proc = self._require()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(job).encode() + b"\n")
        proc.stdin.flush()
        line = self._readline(timeout)
        result: dict[str, Any] = json.loads(line)
        if not result.get("ok"):
            raise LoadGenError(f"load generator job {job.get('op')} failed: {result.get('error')}")
        return result

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(b'{"op": "exit"}\n')
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise LoadGenError("the load generator is not running")
        return self._proc

    def _readline(self, timeout: float) -> bytes:
        proc = self._require()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadGenError(f"the load generator gave no answer within {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                if proc.poll() is not None:
                    raise LoadGenError(f"the load generator exited with status {proc.returncode}")
                continue
            piece = os.read(fd, 1 << 16)
            if not piece:
                proc.wait()
                raise LoadGenError(f"the load generator exited with status {proc.returncode}")
            self._buffer += piece
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


# --------------------------------------------------------------------------- child side


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pids: list[int]) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[str(pid)] = times.user + times.system
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {pid: after[pid] - before[pid] for pid in after if pid in before}


@dataclass(slots=True)
class _Window:
    """The measurement window: when it opened/closed and what was spent inside it."""

    watch: list[int]
    open: bool = False
    t0: float = 0.0
    t1: float = 0.0
    cpu0: dict[str, float] = field(default_factory=dict)
    self0: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    self_cpu: float = 0.0

    def start(self) -> None:
        self.cpu0 = _cpu_of(self.watch)
        self.self0 = _cpu_self()
        self.t0 = time.perf_counter()
        self.open = True

    def stop(self) -> None:
        self.open = False
        self.t1 = time.perf_counter()
        self.cpu = _delta(_cpu_of(self.watch), self.cpu0)
        self.self_cpu = _cpu_self() - self.self0

    def as_dict(self) -> dict[str, Any]:
        seconds = self.t1 - self.t0
        return {
            "window_s": seconds,
            "cpu_s": self.cpu,
            "loadgen_cpu_s": self.self_cpu,
            "loadgen_cpu_pct": 100.0 * self.self_cpu / seconds if seconds > 0 else 0.0,
        }


class _RssSampler:
    """Samples the RSS of some processes every 50 ms and keeps the maximum of each."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self._procs = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self._procs[str(pid)] = psutil.Process(pid)
        self.peak: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, int]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        return self.peak

    def _sample(self) -> None:
        import psutil

        for pid, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss
                self.peak[pid] = max(self.peak.get(pid, 0), rss)

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(_RSS_EVERY)


def _session(target: dict[str, Any], limit: int) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        base_url=target["url"],
        headers={"Content-Type": "application/json", **target.get("headers", {})},
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        auto_decompress=False,
    )


def _body(job: dict[str, Any], i: int = 0) -> bytes:
    bodies = job.get("bodies")
    body = bodies[i % len(bodies)] if bodies else job["body"]
    return json.dumps(body).encode()


async def _job_latency(job: dict[str, Any]) -> dict[str, Any]:
    targets: list[dict[str, Any]] = job["targets"]
    path: str = job["path"]
    body = _body(job)
    sessions = {t["name"]: _session(t, 1) for t in targets}
    lat: dict[str, list[float]] = {t["name"]: [] for t in targets}
    errors: dict[str, int] = {t["name"]: 0 for t in targets}
    statuses: dict[str, int] = {}
    try:
        total = job.get("warmup", 20) + job["requests"]
        t_start = time.perf_counter()
        self0 = _cpu_self()
        for i in range(total):
            order = targets if i % 2 == 0 else list(reversed(targets))
            for target in order:
                name = target["name"]
                t0 = time.perf_counter()
                async with sessions[name].post(path, data=body) as resp:
                    await resp.read()
                    status = resp.status
                dt = (time.perf_counter() - t0) * 1000.0
                if status != 200:
                    errors[name] += 1
                    statuses[f"{name}:{status}"] = statuses.get(f"{name}:{status}", 0) + 1
                elif i >= job.get("warmup", 20):
                    lat[name].append(dt)
        wall = time.perf_counter() - t_start
        self_cpu = _cpu_self() - self0
    finally:
        for session in sessions.values():
            await session.close()
    return {
        "latencies_ms": lat,
        "errors": errors,
        "statuses": statuses,
        "wall_s": wall,
        "loadgen_cpu_pct": 100.0 * self_cpu / wall if wall else 0.0,
    }


async def _timed(
    job: dict[str, Any],
    window: _Window,
    opens_at: float,
    worker: Callable[[int], Coroutine[Any, Any, None]],
) -> None:
    """Run ``concurrency`` workers, open the window after ``opens_at`` s, cancel them at its end."""
    tasks = [asyncio.create_task(worker(i)) for i in range(job["concurrency"])]
    try:
        await asyncio.sleep(opens_at)
        window.start()
        await asyncio.sleep(job["duration_s"])
        window.stop()
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [
        r
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    if failures:
        raise failures[0]


async def _job_saturate(job: dict[str, Any]) -> dict[str, Any]:
    target = job["target"]
    path: str = job["path"]
    stream = bool(job.get("stream"))
    body = _body(job)
    window = _Window(job.get("watch_pids", []))
    counts = {"requests": 0, "chunks": 0, "errors": 0}
    rss = _RssSampler(job.get("watch_pids", []))
    session = _session(target, job["concurrency"])

    async def worker(_i: int) -> None:
        while True:
            async with session.post(path, data=body) as resp:
                if resp.status != 200:
                    await resp.read()
                    if window.open:
                        counts["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                if stream:
                    carry = b""
                    async for piece in resp.content.iter_any():
                        events = (carry + piece).count(_SSE_END)
                        if _DONE in piece:
                            events -= 1
                        carry = piece[-1:]
                        if window.open:
                            counts["chunks"] += events
                else:
                    await resp.read()
            if window.open:
                counts["requests"] += 1

    rss.start()
    try:
        await _timed(job, window, job.get("warmup_s", 1.0), worker)
    finally:
        await session.close()
    return {**counts, **window.as_dict(), "rss_peak": await rss.stop()}


@dataclass(slots=True)
class _StreamRecord:
    worker: int
    started: float
    ttfc_ms: float | None = None
    chunks: int = 0
    digest: str = ""
    text: str = ""
    complete: bool = False


class _Verifier:
    """Parses SSE events of one stream and digests the content deltas in order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._hash = hashlib.sha256()
        self.parts: list[str] = []
        self.chunks = 0
        self.done = False
        self.error: str | None = None

    def feed(self, piece: bytes) -> int:
        """Consume ``piece``; return how many (non-[DONE]) events it completed."""
        self._buffer += piece
        *events, self._buffer = self._buffer.split(_SSE_END)
        n = 0
        for event in events:
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                continue
            if data == _DONE:
                self.done = True
                continue
            n += 1
            try:
                obj = json.loads(data)
                choice = (obj.get("choices") or [{}])[0]
                content = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or ""
            except (ValueError, AttributeError, IndexError, TypeError):
                self.error = f"unparseable chunk: {data[:80]!r}"
                continue
            if "error" in obj:
                self.error = str(obj["error"])[:200]
            self.parts.append(content)
            self._hash.update(content.encode() + b"\x1f" + finish.encode() + b"\x1e")
        self.chunks += n
        return n

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()[:16]


async def _job_streams(job: dict[str, Any]) -> dict[str, Any]:
    target = job["target"]
    path: str = job["path"]
    concurrency: int = job["concurrency"]
    spread: float = job["spread_s"]
    verify = bool(job.get("verify", True))
    window = _Window(job.get("watch_pids", []))
    counts = {"chunks": 0, "errors": 0}
    records: list[_StreamRecord] = []
    error_samples: list[str] = []
    rss = _RssSampler(job.get("watch_pids", []))
    session = _session(target, concurrency)
    bodies = [_body(job, i) for i in range(concurrency)]

    async def worker(i: int) -> None:
        await asyncio.sleep(i * spread / concurrency)
        while True:
            rec = _StreamRecord(worker=i, started=time.perf_counter())
            records.append(rec)
            verifier = _Verifier()
            async with session.post(path, data=bodies[i]) as resp:
                if resp.status != 200:
                    text = await resp.read()
                    counts["errors"] += 1
                    if len(error_samples) < 5:
                        error_samples.append(f"{resp.status}: {text[:200]!r}")
                    await asyncio.sleep(0.05)
                    continue
                async for piece in resp.content.iter_any():
                    now = time.perf_counter()
                    if rec.ttfc_ms is None:
                        rec.ttfc_ms = (now - rec.started) * 1000.0
                    if verify:
                        n = verifier.feed(piece)
                    else:
                        n = piece.count(_SSE_END) - (1 if _DONE in piece else 0)
                        verifier.done = verifier.done or _DONE in piece
                    rec.chunks += n
                    if window.open:
                        counts["chunks"] += n
            rec.complete = verifier.done
            if verify:
                rec.digest = verifier.digest
                rec.text = "".join(verifier.parts)
                if verifier.error is not None:
                    counts["errors"] += 1
                    if len(error_samples) < 5:
                        error_samples.append(verifier.error)
            if not rec.complete:
                counts["errors"] += 1
                if len(error_samples) < 5:
                    error_samples.append(f"stream ended without [DONE] after {rec.chunks} chunks")

    rss.start()
    try:
        await _timed(job, window, spread, worker)
    finally:
        await session.close()
    t_end = window.t1
    ttfc = [r.ttfc_ms for r in records if r.ttfc_ms is not None and r.started < t_end]
    done = [r for r in records if r.complete]
    digests: dict[str, dict[str, int]] = {}
    chunk_counts: dict[str, int] = {}
    texts: dict[str, str] = {}
    for r in done:
        texts.setdefault(str(r.worker), r.text)
        per = digests.setdefault(str(r.worker), {})
        per[r.digest] = per.get(r.digest, 0) + 1
        chunk_counts[str(r.chunks)] = chunk_counts.get(str(r.chunks), 0) + 1
    return {
        **counts,
        **window.as_dict(),
        "ttfc_ms": ttfc,
        "streams_started": len(records),
        "streams_completed": len(done),
        "digests": digests,
        "chunk_counts": chunk_counts,
        "texts": texts,
        "error_samples": error_samples,
        "rss_peak": await rss.stop(),
    }


async def _job_stream_latency(job: dict[str, Any]) -> dict[str, Any]:
    targets: list[dict[str, Any]] = job["targets"]
    path: str = job["path"]
    body = _body(job)
    warmup: int = job.get("warmup", 1)
    sessions = {t["name"]: _session(t, 1) for t in targets}
    fields = ("ttfc_ms", "total_ms", "chunks", "decode_per_s", "digests")
    out: dict[str, dict[str, list[Any]]] = {t["name"]: {f: [] for f in fields} for t in targets}
    errors: dict[str, int] = {t["name"]: 0 for t in targets}
    samples: list[str] = []
    try:
        t_start = time.perf_counter()
        self0 = _cpu_self()
        for i in range(warmup + job["requests"]):
            for target in targets if i % 2 == 0 else list(reversed(targets)):
                name = target["name"]
                verifier = _Verifier()
                first = last = 0.0
                t0 = time.perf_counter()
                async with sessions[name].post(path, data=body) as resp:
                    if resp.status != 200:
                        text = await resp.read()
                        errors[name] += 1
                        if len(samples) < 5:
                            samples.append(f"{name}: {resp.status}: {text[:200]!r}")
                        continue
                    async for piece in resp.content.iter_any():
                        if verifier.feed(piece):
                            last = time.perf_counter()
                            first = first or last
                end = time.perf_counter()
                if verifier.error is not None or not verifier.done or not first:
                    errors[name] += 1
                    if len(samples) < 5:
                        samples.append(f"{name}: {verifier.error or 'no [DONE]'}")
                    continue
                if i < warmup:
                    continue
                record = out[name]
                record["ttfc_ms"].append((first - t0) * 1000.0)
                record["total_ms"].append((end - t0) * 1000.0)
                record["chunks"].append(verifier.chunks)
                span = last - first
                rate = (verifier.chunks - 1) / span if verifier.chunks > 1 and span > 0 else 0.0
                record["decode_per_s"].append(rate)
                record["digests"].append(verifier.digest)
        wall = time.perf_counter() - t_start
        self_cpu = _cpu_self() - self0
    finally:
        for session in sessions.values():
            await session.close()
    return {
        "targets": out,
        "errors": errors,
        "error_samples": samples,
        "wall_s": wall,
        "loadgen_cpu_pct": 100.0 * self_cpu / wall if wall else 0.0,
    }


_JOBS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "latency": _job_latency,
    "saturate": _job_saturate,
    "streams": _job_streams,
    "stream_latency": _job_stream_latency,
}


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    while True:
        line = await reader.readline()
        if not line:
            return
        job = json.loads(line)
        op = job.get("op")
        if op == "exit":
            return
        try:
            if op == "ping":
                result: dict[str, Any] = {"pid": os.getpid()}
            else:
                result = await _JOBS[op](job)
            result["ok"] = True
        except Exception as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result).encode() + b"\n")
        out.flush()


def main() -> None:
    """Entry point of the load generator process (uvloop when available)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


if __name__ == "__main__":
    main()

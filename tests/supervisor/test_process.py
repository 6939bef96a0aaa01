"""The child-process toolkit and the ``ollama serve`` child built on it: environment, output
relay, exit notice, group stop, guarded states, backoff.

These use small shell scripts as OLLAMA_BIN, so each behaviour is exact and fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy.children import Backoff, ChildProcess, ChildState, InvalidTransition, describe_returncode
from proxy.config import ConfigError, Settings
from proxy.ollama import (
    OllamaExitedError,
    OllamaStartTimeoutError,
    build_child_env,
    ollama_child,
    resolve_executable,
    wait_until_ready,
)
from proxy.testing.harness import free_port
from tests.clients import CLIENT_TIMEOUT

from .helpers import EXIT_TIMEOUT, alive, await_until, wait_for

STOP_GRACE = 2.0
"""Grace given to scripted children that obey SIGTERM (seconds)."""
NOTICE_LIMIT = 1.0
"""An exit must be noticed well within this (seconds), pipes held open or not."""


def script(tmp_path: Path, body: str, name: str = "fake-ollama") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"ollama_internal_port": free_port()}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_child_env_sets_host_and_keep_alive_but_respects_the_operator() -> None:
    s = settings(ollama_internal_port=12345)
    env = build_child_env(s, {"PATH": "/bin", "OLLAMA_NUM_PARALLEL": "2"})
    assert env["OLLAMA_HOST"] == "127.0.0.1:12345"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["OLLAMA_NUM_PARALLEL"] == "2"
    assert env["PATH"] == "/bin"
    env = build_child_env(s, {"OLLAMA_KEEP_ALIVE": "5m", "OLLAMA_HOST": "0.0.0.0:1"})
    assert env["OLLAMA_KEEP_ALIVE"] == "5m"
    assert env["OLLAMA_HOST"] == "127.0.0.1:12345"
    v6 = build_child_env(settings(ollama_internal_host="::1", ollama_internal_port=7), {})
    assert v6["OLLAMA_HOST"] == "[::1]:7"


def test_describe_returncode() -> None:
    assert describe_returncode(3) == "exited with status 3"
    assert describe_returncode(-signal.SIGTERM) == "was killed by signal SIGTERM"
    assert "out of memory" in describe_returncode(-signal.SIGKILL)


def test_resolve_executable(tmp_path: Path) -> None:
    assert resolve_executable("sh").endswith("/sh")
    with pytest.raises(ConfigError, match="OLLAMA_BIN: 'no-such-ollama' was not found on PATH"):
        resolve_executable("no-such-ollama")
    with pytest.raises(ConfigError, match="is not an executable file"):
        resolve_executable(str(tmp_path / "missing"))


async def test_output_is_relayed_as_ollama_events_and_stderr_tail_kept(tmp_path: Path) -> None:
    exe = script(
        tmp_path,
        'echo "to stdout"\n'
        'echo "time=x level=WARN msg=careful" >&2\n'
        'echo "[GIN] 2026/11/27 - 17:22:12 | 200 |  619.9µs | 127.0.0.1 | '
        'POST \\"/api/chat\\"" >&2\n'
        'for i in $(seq 1 30); do echo "line $i" >&2; done\n'
        "printf 'no newline at the end' >&2\n"
        "exit 3\n",
    )
    process = ollama_child(settings(), exe)
    with capture_logs() as logs:
        await process.start()
        assert await wait_for(process.wait(), EXIT_TIMEOUT, "the script to exit") == 3
        await process.drain()
        await process.stop(STOP_GRACE)
    relayed = [e for e in logs if e.get("source") == "ollama"]
    assert {"event": "to stdout", "stream": "stdout"}.items() <= relayed[0].items()
    warn = next(e for e in relayed if "careful" in e["event"])
    assert warn["log_level"] == "warning"
    gin = next(e for e in relayed if e["event"].startswith("[GIN]"))
    assert gin["log_level"] == "debug", "the proxy's access log already has the request"
    assert relayed[-1]["event"] == "no newline at the end"
    assert len(relayed) == 34
    assert len(process.stderr_tail) == 20
    assert process.stderr_tail[-1] == "no newline at the end"
    assert process.describe_exit() == "exited with status 3"


async def test_exit_is_noticed_even_when_a_grandchild_holds_the_pipes(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    exe = script(tmp_path, f"sleep 60 &\necho $! > {pid_file}\nexit 7\n")
    process = ollama_child(settings(), exe)
    await process.start()
    started = time.monotonic()
    assert await wait_for(process.wait(), EXIT_TIMEOUT, "the exit notice") == 7
    assert time.monotonic() - started < NOTICE_LIMIT
    grandchild = int(pid_file.read_text())
    assert alive(grandchild)
    await process.stop(STOP_GRACE)  # the group is killed: no runner outlives Ollama
    await await_until(lambda: not alive(grandchild), EXIT_TIMEOUT, "the grandchild to die")


async def test_stop_terms_then_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # The leader ignores SIGTERM; so must the stop escalate to SIGKILL of the group.
    exe = script(
        tmp_path,
        f"trap '' TERM\nsleep 60 &\necho $! > {pid_file}\necho ready >&2\n"
        "while true; do sleep 0.05; done\n",
    )
    process = ollama_child(settings(), exe)
    await process.start()
    await await_until(lambda: process.stderr_tail, EXIT_TIMEOUT, "the script to start")
    grandchild = int(pid_file.read_text())
    started = time.monotonic()
    code = await wait_for(process.stop(0.3), EXIT_TIMEOUT, "the stop")
    assert code == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < EXIT_TIMEOUT
    await await_until(lambda: not alive(grandchild), EXIT_TIMEOUT, "the grandchild to die")
    assert await process.stop(0.3) == code  # idempotent


async def test_the_child_has_its_own_session_and_a_parent_death_signal(tmp_path: Path) -> None:
    exe = script(tmp_path, "sleep 60\n")
    process = ollama_child(settings(), exe)
    await process.start()
    try:
        assert process.pid is not None
        assert os.getpgid(process.pid) == process.pid
        assert os.getsid(process.pid) == process.pid
    finally:
        await process.stop(STOP_GRACE)


async def test_readiness_reports_an_early_exit_with_status_and_stderr(tmp_path: Path) -> None:
    exe = script(tmp_path, 'echo "Error: listen tcp: address already in use" >&2\nexit 1\n')
    s = settings()
    process = ollama_child(s, exe)
    await process.start()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        with pytest.raises(OllamaExitedError) as caught:
            await wait_until_ready(session, process, s.ollama_url, start_timeout=EXIT_TIMEOUT)
    await process.stop(STOP_GRACE)
    assert caught.value.returncode == 1
    assert "exited with status 1 before it was ready" in str(caught.value)
    assert "address already in use" in str(caught.value)


async def test_readiness_times_out_clearly(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo starting >&2\nsleep 60\n")
    s = settings()
    process = ollama_child(s, exe)
    await process.start()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        with pytest.raises(OllamaStartTimeoutError, match=r"OLLAMA_START_TIMEOUT=0\.3s"):
            await wait_until_ready(session, process, s.ollama_url, start_timeout=0.3)
    await process.stop(STOP_GRACE)


async def test_a_cancelled_stop_still_completes(tmp_path: Path) -> None:
    exe = script(tmp_path, "trap 'sleep 0.3; exit 0' TERM\nwhile true; do sleep 0.05; done\n")
    process = ollama_child(settings(), exe)
    await process.start()
    first = asyncio.ensure_future(process.stop(STOP_GRACE))
    await asyncio.sleep(0)
    first.cancel()
    assert await wait_for(process.stop(STOP_GRACE), EXIT_TIMEOUT, "the stop") is not None
    assert process.pid is not None
    assert not alive(process.pid)


async def test_states_move_one_way_and_a_second_start_is_a_bug(tmp_path: Path) -> None:
    child = ChildProcess([script(tmp_path, "sleep 60\n")], env={}, name="test")
    assert child.state is ChildState.NEW
    assert await child.stop(STOP_GRACE) is None  # never started: nothing to do
    await child.start()
    assert child.state is ChildState.RUNNING
    with pytest.raises(InvalidTransition, match="from running to running"):
        await child.start()
    await child.stop(STOP_GRACE)
    assert child.state is ChildState.EXITED
    with pytest.raises(InvalidTransition, match="from exited to running"):
        await child.start()


async def test_a_child_that_exits_by_itself_is_exited(tmp_path: Path) -> None:
    child = ChildProcess([script(tmp_path, "exit 4\n")], env={}, name="test")
    await child.start()
    assert await wait_for(child.wait(), EXIT_TIMEOUT, "the exit") == 4
    assert child.state is ChildState.EXITED
    assert await child.stop(STOP_GRACE) == 4


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, maximum=2.0, stable_after=60.0)
    assert [backoff.next_delay(1.0) for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    assert backoff.next_delay(uptime=61.0) == 0.5
    backoff.reset()
    assert backoff.next_delay() == 0.5

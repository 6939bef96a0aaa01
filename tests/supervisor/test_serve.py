"""``python -m proxy serve|pull|check`` as real processes, with real signals and the simulator."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from proxy.testing.services import ProxyProcess

from .helpers import (
    EXIT_TIMEOUT,
    HTTP_TIMEOUT,
    READY_TIMEOUT,
    alive,
    run_cli,
    sims_using,
    wait_until,
)

pytestmark = pytest.mark.slow

StartProxy = Callable[..., ProxyProcess]

STREAM_TOKENS = 10
TOKEN_DELAY = 0.1
"""A streamed generation then lasts about STREAM_TOKENS x TOKEN_DELAY seconds."""


def ollama_pid(proxy: ProxyProcess) -> int:
    return int(proxy.wait_ollama(READY_TIMEOUT).pid)


def test_serve_relays_ollama_logs_and_sigterm_exits_0_without_leftovers(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy("serve")
    body = proxy.wait_ready()
    assert body["status"] == "ready"
    assert set(body["models"]) == {"smollm2:135m", "all-minilm:latest"}
    child = ollama_pid(proxy)
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit() == 0
    assert not alive(child)
    events = proxy.events()
    relayed = [e for e in events if e.get("source") == "ollama"]
    assert any("Listening on" in e["event"] for e in relayed)
    assert all(e["module"] == "ollama" for e in relayed)
    names = [e["event"] for e in events]
    assert "PROXY_API_KEY is not set: listening on 127.0.0.1 only, without authentication" in names
    assert names.index("signal received; shutting down") < names.index("ollama stopped")


def test_sigterm_lets_in_flight_requests_finish(start_proxy: StartProxy) -> None:
    proxy = start_proxy(
        "serve", SIM_TOKEN_DELAY=str(TOKEN_DELAY), SIM_NUM_TOKENS=str(STREAM_TOKENS)
    )
    proxy.wait_ready()
    child = ollama_pid(proxy)
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request(
        "POST",
        "/api/generate",
        body=json.dumps({"model": "smollm2:135m", "prompt": "hello"}),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    first = json.loads(response.readline())
    assert first["done"] is False
    proxy.send_signal(signal.SIGTERM)
    wait_until(lambda: proxy.get("/readyz")[0] != 200, EXIT_TIMEOUT, "/readyz to stop")
    chunks = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert chunks[-1]["done"] is True
    assert len(chunks) + 1 >= STREAM_TOKENS
    assert proxy.wait_exit() == 0
    assert not alive(child)


def test_a_second_signal_forces_the_exit(start_proxy: StartProxy) -> None:
    proxy = start_proxy("serve", SIM_TOKEN_DELAY="1", SIM_NUM_TOKENS="60", SHUTDOWN_GRACE="60")
    proxy.wait_ready()
    child = ollama_pid(proxy)
    done = threading.Event()

    def hold_a_request() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            body = json.dumps({"model": "smollm2:135m", "prompt": "hi"})
            connection.request("POST", "/api/generate", body=body)
            response = connection.getresponse()
            response.readline()
            done.set()
            response.read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            done.set()

    threading.Thread(target=hold_a_request, daemon=True).start()
    assert done.wait(READY_TIMEOUT)
    proxy.send_signal(signal.SIGTERM)
    wait_until(lambda: proxy.get("/readyz")[0] != 200, EXIT_TIMEOUT, "the drain to start")
    started = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit() == 128 + signal.SIGTERM
    assert time.monotonic() - started < EXIT_TIMEOUT / 3
    wait_until(lambda: not alive(child), EXIT_TIMEOUT, "the ollama child to die")


def test_sigkill_of_the_proxy_leaves_no_orphan(start_proxy: StartProxy) -> None:
    proxy = start_proxy("serve")
    proxy.wait_ready()
    child = ollama_pid(proxy)
    proxy.send_signal(signal.SIGKILL)
    proxy.wait_exit()
    wait_until(lambda: not alive(child), EXIT_TIMEOUT, f"ollama-sim {child} to die")
    assert not sims_using(proxy.models_dir)


def test_start_failure_keeps_serving_readyz_with_the_reason(start_proxy: StartProxy) -> None:
    proxy = start_proxy("serve", SIM_EXIT_AT_START="3", OLLAMA_START_ATTEMPTS="2")

    def failed() -> Any:
        proxy.check_running()
        status, body = proxy.get("/readyz")
        return (status, body) if status and body["ollama"]["state"] == "failed" else None

    status, body = wait_until(failed, READY_TIMEOUT, "ollama to be marked failed")
    assert status == 503
    reason = body["ollama"]["reason"]
    assert "ollama serve exited with status 3 before it was ready" in reason
    assert "simulated start failure" in reason
    assert "gave up after 2 attempts" in reason
    starts = [e for e in proxy.events() if e["event"] == "ollama started"]
    assert len(starts) == 2
    proxy.check_running()  # it keeps serving, so that operators can see why
    check = run_cli("check", env=proxy.env)
    assert check.returncode == 1
    assert check.stdout.startswith(
        "not ready (degraded): Ollama is failed: ollama serve exited with status 3"
    )
    assert len(check.stdout.splitlines()) == 1


def test_unknown_model_fails_fast_while_the_others_become_ready(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy("serve", OLLAMA_CHAT_MODELS="smollm2:135m,doesnotexist")

    def settled() -> Any:
        proxy.check_running()
        status, body = proxy.get("/readyz")
        if not status:
            return None
        states = {m["state"] for m in body["models"].values()}
        return body if states <= {"ready", "failed"} else None

    body = wait_until(settled, READY_TIMEOUT, "the models to settle")
    assert body["status"] == "degraded"
    assert body["models"]["doesnotexist:latest"] == {
        "kind": "chat",
        "state": "failed",
        "reason": "pull failed: pull model manifest: file does not exist",
    }
    assert body["models"]["smollm2:135m"]["state"] == "ready"
    assert body["models"]["all-minilm:latest"]["state"] == "ready"
    missing = [p for p in proxy.pulls() if p["model"] == "doesnotexist:latest"]
    assert len(missing) == 1  # no retry


def test_baked_models_are_not_pulled_again(instance: ProxyProcess, start_proxy: StartProxy) -> None:
    baked = run_cli("pull", env=instance.env)
    assert baked.returncode == 0, baked.stderr
    pulls = instance.pulls()
    assert sorted(p["model"] for p in pulls if p["outcome"] == "success") == [
        "all-minilm:latest",
        "smollm2:135m",
    ]
    assert not sims_using(instance.models_dir)  # `pull` stopped its Ollama
    proxy = start_proxy("serve")
    proxy.wait_ready()
    assert instance.pulls() == pulls
    assert "model present" in [e["event"] for e in proxy.events()]


def test_pull_fails_when_a_model_is_missing(instance: ProxyProcess) -> None:
    result = run_cli("pull", env={**instance.env, "OLLAMA_CHAT_MODELS": "doesnotexist"})
    assert result.returncode == 1
    assert "file does not exist" in result.stderr
    assert not sims_using(instance.models_dir)


def test_crash_after_ready_goes_503_then_back_to_200(start_proxy: StartProxy) -> None:
    proxy = start_proxy("serve")
    proxy.wait_ready()
    pulls = proxy.pulls()
    child = ollama_pid(proxy)
    psutil.Process(child).kill()
    _, body = wait_until(
        lambda: (r := proxy.get("/readyz"))[0] == 503 and r, EXIT_TIMEOUT, "/readyz 503"
    )
    assert body["ollama"]["state"] in {"restarting", "starting", "up"}
    body = proxy.wait_ready()
    assert body["ollama"]["restarts"] == 1
    assert ollama_pid(proxy) != child
    assert proxy.pulls() == pulls  # nothing downloaded again


def test_check_exit_codes(start_proxy: StartProxy, instance: ProxyProcess) -> None:
    unreachable = run_cli("check", "--timeout", "1", env=instance.env)
    assert unreachable.returncode == 1
    assert unreachable.stdout.startswith("not ready: http://127.0.0.1:")
    assert "unreachable" in unreachable.stdout
    proxy = start_proxy("serve")
    proxy.wait_ready()
    ready = run_cli("check", env=instance.env)
    assert ready.returncode == 0
    assert ready.stdout.strip() == "ready"
    by_url = run_cli("check", "--url", instance.url, "--timeout", str(HTTP_TIMEOUT), env={})
    assert by_url.returncode == 0


CONFIG_ERRORS = [
    ("serve", "PULL_CONCURRENCY", "abc", "'abc' is not an integer"),
    ("pull", "OLLAMA_BIN", "/no/such/ollama", "'/no/such/ollama' is not an executable file"),
    ("serve", "OLLAMA_BIN", "no-such-ollama", "'no-such-ollama' was not found on PATH"),
    ("check", "PROXY_PORT", "0", "0 is below the minimum of 1"),
]


@pytest.mark.parametrize(("command", "variable", "value", "problem"), CONFIG_ERRORS)
def test_config_error_exits_2_with_one_line(
    instance: ProxyProcess, command: str, variable: str, value: str, problem: str
) -> None:
    result = run_cli(command, env={**instance.env, variable: value}, timeout=EXIT_TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"config error: {variable}: {problem}"]


def test_pull_durations_reach_the_metrics(start_proxy: StartProxy) -> None:
    proxy = start_proxy("serve")
    proxy.wait_ready()
    with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for model in ("smollm2:135m", "all-minilm:latest"):
        assert (
            f'proxy_model_pull_duration_seconds_count{{model="{model}",outcome="success"}} 1.0'
            in text
        )
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit() == 0

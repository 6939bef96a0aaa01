"""The real deployment package in the strict emulation, at start-up: any start order, a cold start
that downloads models (``__init__`` does not wait for it; requests say so), and a request that
runs past its timeout (its process, process 0 with the proxy, is replaced)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.startup import DOWNLOAD_GRACE
from proxy.testing.harness import wait_until
from proxy.testing.ubiops_instance import UbiOpsInstance, timeout_error
from tests.deployment.conftest import PACKAGE_DIR, sim_env

pytestmark = pytest.mark.slow

CHAT = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}]}
STARTED_TIMEOUT = 60.0
REQUEST_TIMEOUT = 20.0
RETRY_PAUSE = 0.5
"""Between rounds of requests that were refused (as a client that read "retry shortly")."""


def _chat(**extra: Any) -> str:
    return json.dumps(CHAT | extra)


def _serves(instance: UbiOpsInstance, errors: list[str]) -> bool:
    results = instance.batch([_chat()] * instance.processes * 2, timeout=REQUEST_TIMEOUT)
    errors += [r.error for r in results if r.error is not None]
    if not all(r.ok for r in results):
        time.sleep(RETRY_PAUSE)
        return False
    return {r.process_id for r in results} == set(range(instance.processes))


@pytest.mark.parametrize("order", ["zero-first", "zero-last"])
def test_any_start_order_ends_serving_and_says_when_it_is_not_yet(
    tmp_path: Path, order: str
) -> None:
    # Processes 1..N wait at most READY_TIMEOUT for a proxy that process 0 has not started yet.
    env = sim_env(tmp_path, SIM_START_DELAY="2.0", READY_TIMEOUT="3")
    with UbiOpsInstance(PACKAGE_DIR, processes=3, env=env, start_order=order) as instance:  # type: ignore[arg-type]
        early: list[str] = []
        if order == "zero-last":
            wait_until(lambda: len(instance.started_at) == 2, STARTED_TIMEOUT, "processes 1, 2")
            result = instance.request(_chat(), timeout=REQUEST_TIMEOUT)
            assert result.process_id in (1, 2)
            assert result.error is not None
            assert result.error.startswith("The model server is starting"), result.error
        instance.wait_started(STARTED_TIMEOUT)
        wait_until(lambda: _serves(instance, early), STARTED_TIMEOUT, "every process serving")
    assert all(e.startswith("The model server is starting") for e in early), early


def test_a_cold_start_that_downloads_models_does_not_hold_init_and_requests_say_so(
    tmp_path: Path,
) -> None:
    # Pulls longer than DOWNLOAD_GRACE (4 s a layer), READY_TIMEOUT as in production: __init__
    # must not wait for them, as a UbiOps build validating the version (it builds the
    # Deployment) must not.
    env = sim_env(tmp_path, SIM_PULL_DELAY="0.4", SIM_PULL_STEPS="10", READY_TIMEOUT="1800")
    started = time.monotonic()
    with UbiOpsInstance(PACKAGE_DIR, processes=2, env=env) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        waited = time.monotonic() - started
        assert waited < DOWNLOAD_GRACE + 8, f"__init__ waited {waited:.1f} s"

        result = instance.request(_chat(), timeout=REQUEST_TIMEOUT)
        assert result.error is not None
        assert result.error.startswith("The model server is starting (pulling: "), result.error
        assert "pulling" in result.error
        assert result.error.endswith("retry in a minute (models are being downloaded).")
        assert time.monotonic() - started < DOWNLOAD_GRACE + 12, "it failed at once"

        errors: list[str] = []
        wait_until(lambda: _serves(instance, errors), 60.0, "the pulls to finish")
    assert all(e.startswith("The model server is starting") for e in errors), errors


def test_a_request_past_its_timeout_replaces_process_zero_and_its_proxy(tmp_path: Path) -> None:
    env = sim_env(tmp_path, SIM_TOKEN_DELAY="0.5", SIM_NUM_TOKENS="12")
    with UbiOpsInstance(PACKAGE_DIR, processes=1, env=env) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        before = instance.pids[0]

        result = instance.request(_chat(stream=True), timeout=1.0)

        assert result.error == timeout_error(1.0)
        assert result.updates, "it had started streaming"
        assert instance.pids[0] != before
        errors: list[str] = []
        wait_until(lambda: _serves(instance, errors), STARTED_TIMEOUT, "the new process 0")

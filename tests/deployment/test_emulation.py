"""The emulated UbiOps instance is at least as strict as the platform: what a process sees
(input as text, a fresh extracted package, only the version's variables, a working directory of
its own), any start order, the output must be text, and a timeout that aborts the request and
replaces its process. A probe deployment reports what it sees."""

from __future__ import annotations

import json
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from proxy.testing.ubiops_instance import GENERIC_ERROR, UbiOpsInstance, timeout_error
from proxy.testing.ubiops_process import not_text_error

pytestmark = pytest.mark.slow

STARTED_TIMEOUT = 30.0
REQUEST_TIMEOUT = 20.0
INIT_SECONDS = 0.6
"""How long the probe's ``__init__`` takes, so that start orders can be told apart."""

PROBE = textwrap.dedent(
    """
    import json, os, sys, time

    class Deployment:
        def __init__(self, base_directory, context):
            self.began = time.monotonic()
            time.sleep(float(os.environ.get("PROBE_INIT_SECONDS", "0")))
            self.base_directory = base_directory
            self.context = context
            self.ended = time.monotonic()

        def request(self, data, context):
            if data.startswith("sleep "):
                time.sleep(float(data.split()[1]))
            if data == "dict":
                return {"not": "text"}
            if data == "fail":
                raise ValueError("a bug")
            return json.dumps({
                "type": type(data).__name__,
                "data": data,
                "process_id": self.context["process_id"],
                "began": self.began,
                "ended": self.ended,
                "pid": os.getpid(),
                "cwd": os.getcwd(),
                "base_directory": self.base_directory,
                "file": __file__,
                "environ": sorted(os.environ),
                "listing": sorted(os.listdir(self.base_directory)),
            })
    """
)


@pytest.fixture
def probe_package(tmp_path: Path) -> Path:
    package = tmp_path / "probe_package"
    package.mkdir()
    (package / "deployment.py").write_text(PROBE)
    cache = package / "__pycache__"
    cache.mkdir()
    (cache / "deployment.cpython-311.pyc").write_bytes(b"stale")
    return package


def _seen(instance: UbiOpsInstance, data: object = "hello") -> dict[str, object]:
    result = instance.request(data, timeout=REQUEST_TIMEOUT)
    assert result.ok, result.error
    seen: dict[str, object] = json.loads(result.output)
    return seen


def _all_seen(instance: UbiOpsInstance) -> dict[int, dict[str, object]]:
    """What each process saw: one request per process, all at once."""
    results = instance.batch(["hello"] * instance.processes * 3, timeout=REQUEST_TIMEOUT)
    seen = {}
    for result in results:
        assert result.ok, result.error
        seen[result.process_id] = json.loads(result.output)
    return seen


def test_a_process_sees_text_a_fresh_package_and_only_the_versions_variables(
    probe_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_RUNNER_ONLY", "1")
    with UbiOpsInstance(probe_package, processes=2, env={"VERSION_VAR": "x"}) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        seen = _seen(instance, {"model": "m", "messages": []})
        assert seen["type"] == "str"
        assert json.loads(str(seen["data"])) == {"model": "m", "messages": []}, "JSON text"

        base = Path(str(seen["base_directory"]))
        assert base == instance.base_directory
        assert base.name == "deployment_package"
        assert base.resolve() != probe_package.resolve(), "extracted from the zip"
        assert seen["file"] == str(base / "deployment.py")
        assert "deployment.py" in seen["listing"]  # type: ignore[operator]
        stale = base / "__pycache__" / "deployment.cpython-311.pyc"
        assert not stale.exists() or stale.read_bytes() != b"stale", "the zip holds no byte code"
        assert seen["environ"] == ["HOME", "LANG", "PATH", "VERSION_VAR"]

        both = _all_seen(instance)
        assert set(both) == {0, 1}
        cwds = {str(s["cwd"]) for s in both.values()}
        assert len(cwds) == 2, "a working directory per process"
        assert all(not cwd.startswith(str(base)) for cwd in cwds)
        assert all(cwd != str(Path.cwd()) for cwd in cwds)
    assert base.exists() is False, "removed when the instance stops"


def test_the_context_reaches_a_process_but_never_its_command_line(probe_package: Path) -> None:
    """The context carries the version's variables, keys included: ``ps`` shows command lines."""
    secret = "sk-probe-0123456789abcdef"
    with UbiOpsInstance(probe_package, processes=2, env={"PROXY_API_KEY": secret}) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        seen = _all_seen(instance)
        assert set(seen) == {0, 1}, "each process read its process_id from the context"
        for probe in seen.values():
            command_line = " ".join(psutil.Process(int(str(probe["pid"]))).cmdline())
            assert "proxy.testing.ubiops_process" in command_line
            assert secret not in command_line


def test_the_output_must_be_text_and_errors_are_shown_as_ubiops_does(
    probe_package: Path,
) -> None:
    with UbiOpsInstance(probe_package, processes=1) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        assert instance.request("dict", timeout=REQUEST_TIMEOUT).error == not_text_error({})
        assert instance.request("fail", timeout=REQUEST_TIMEOUT).error == GENERIC_ERROR
        assert instance.request("hello", timeout=REQUEST_TIMEOUT).ok
        with pytest.raises(ValueError, match="at most 3600"):
            instance.request("hello", timeout=3601)


@pytest.mark.parametrize("order", ["together", "zero-first", "zero-last"])
def test_every_start_order(probe_package: Path, order: str) -> None:
    env = {"PROBE_INIT_SECONDS": str(INIT_SECONDS)}
    with UbiOpsInstance(probe_package, processes=3, env=env, start_order=order) as instance:  # type: ignore[arg-type]
        instance.wait_started(STARTED_TIMEOUT)
        seen = _all_seen(instance)
    assert set(seen) == {0, 1, 2}
    zero, others = seen[0], [seen[1], seen[2]]
    if order == "zero-first":
        assert all(float(o["began"]) >= float(zero["ended"]) for o in others)
    elif order == "zero-last":
        assert float(zero["began"]) >= max(float(o["ended"]) for o in others)
    else:
        assert max(float(s["began"]) for s in seen.values()) < float(zero["ended"]), "together"


def test_a_request_past_its_timeout_fails_and_its_process_is_replaced(
    probe_package: Path,
) -> None:
    with UbiOpsInstance(probe_package, processes=1) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        before = _seen(instance)
        started = time.monotonic()

        result = instance.request("sleep 30", timeout=0.5)

        assert result.error == timeout_error(0.5)
        assert time.monotonic() - started < 5, "aborted at the timeout, not when it finished"
        after = _seen(instance)
        assert after["pid"] != before["pid"], "the hung process was replaced"
        assert after["process_id"] == 0
        assert float(after["began"]) > started, "the new process initialised again"


def test_waiting_for_a_free_process_counts_towards_the_timeout(probe_package: Path) -> None:
    with UbiOpsInstance(probe_package, processes=1) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(instance.request, "sleep 1.5", timeout=REQUEST_TIMEOUT)
            time.sleep(0.3)
            waited = instance.request("hello", timeout=0.5)
            assert busy.result().ok
    assert waited.error == timeout_error(0.5)
    assert waited.process_id == -1, "it never reached a process"

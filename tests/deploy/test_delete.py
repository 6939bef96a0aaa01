"""``--delete``: removes what the command created, after a confirmation, and names what it keeps."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from .conftest import Runner
from .fake_ubiops import FakeUbiOps

pytest.importorskip("ubiops")

DEP = "ollama-multi-model-server"
BASE = "/v2/projects/demo"


def test_delete_removes_service_version_deployment_and_environment(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image), "--service").code == 0
    before = len(fake.calls)

    result = deploy("--delete", "--yes")

    assert result.code == 0, result.err
    assert [(c.method, c.path) for c in fake.calls[before:] if c.mutating] == [
        ("DELETE", f"{BASE}/services/{DEP}-v1"),
        ("DELETE", f"{BASE}/deployments/{DEP}/versions/v1"),
        ("DELETE", f"{BASE}/deployments/{DEP}"),
        ("DELETE", f"{BASE}/environments/ollama-env"),
    ]
    for objects in (fake.state.services, fake.state.versions, fake.state.deployments):
        assert not objects
    assert not fake.state.environments
    for line in (
        f"deleted: service {DEP}-v1",
        f"deleted: version {DEP}/v1",
        f"deleted: deployment {DEP}",
        "deleted: environment ollama-env",
        "done: 4 object(s) deleted",
    ):
        assert line in result.out
    again = deploy("--delete", "--yes")
    assert again.code == 0
    assert "nothing to delete" in again.out


def test_delete_keeps_what_other_versions_use_and_says_why(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    assert deploy("--version", "v2").code == 0

    result = deploy("--delete", "--yes")

    assert result.code == 0, result.err
    assert (DEP, "v1") not in fake.state.versions
    assert (DEP, "v2") in fake.state.versions
    assert DEP in fake.state.deployments
    assert "ollama-env" in fake.state.environments
    assert f"keeping: deployment {DEP} (it has other versions: v2)" in result.out
    assert f"keeping: environment ollama-env (still used by {DEP}/v2)" in result.out


def test_delete_keeps_objects_it_did_not_create(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    fake.state.deployments[DEP].update(labels={}, description="made by hand")
    fake.state.services["by-hand"] = {
        "id": "s1",
        "name": "by-hand",
        "deployment": DEP,
        "version": "v1",
        "port": 8080,
        "time_created": "2026-01-01T00:00:00Z",
        "time_updated": "2026-01-01T00:00:00Z",
        "labels": {},
        "authentication_required": True,
        "type": "deployment",
        "description": "someone else's",
    }

    result = deploy("--delete", "--yes")

    assert result.code == 0, result.err
    assert "keeping: service by-hand (deploy.sh did not create it)" in result.out
    assert f"keeping: version {DEP}/v1 (service by-hand still uses it)" in result.out
    assert not any(method == "DELETE" for method, _ in fake.mutations())
    assert "nothing to delete" in result.out

    del fake.state.services["by-hand"]
    result = deploy("--delete", "--yes")
    assert f"deleted: version {DEP}/v1" in result.out
    assert f"keeping: deployment {DEP} (deploy.sh did not create it)" in result.out
    assert "deleted: environment ollama-env" in result.out


def test_delete_asks_first_and_does_nothing_when_not_confirmed(
    deploy: Runner, fake: FakeUbiOps, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert deploy("--image", str(image)).code == 0
    before = len(fake.calls)

    piped = deploy("--delete")
    assert piped.code == 1
    assert "--delete asks for confirmation: run it in a terminal or pass --yes" in piped.err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    questions: list[str] = []
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("builtins.input", lambda q: questions.append(q) or "n")
    refused = deploy("--delete")

    assert refused.code == 1
    assert "not confirmed: nothing was deleted" in refused.err
    assert questions == ["Delete these 3 object(s) from project demo? [y/N] "]
    assert f"to delete: version {DEP}/v1, deployment {DEP}, environment ollama-env" in refused.out
    assert [c for c in fake.calls[before:] if c.mutating] == []

    monkeypatch.setattr("builtins.input", lambda _q: "yes")
    assert deploy("--delete").code == 0
    assert not fake.state.deployments


def test_delete_dry_run_calls_nothing(deploy: Runner, fake: FakeUbiOps) -> None:
    result = deploy("--delete", "--dry-run", token=None)

    assert result.code == 0, result.err
    assert fake.calls == []
    assert "--delete would:" in result.out
    assert f"version {DEP}/v1" in result.out
    assert "objects deploy.sh did not create are kept and named" in result.out

"""Pure helpers: names, OLLAMA_HOST, Go durations, settings, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from proxy.testing.simulator import (
    Faults,
    PullFailureMode,
    embedding_dimension,
    expected_embedding,
    expected_text,
    expected_tokens,
    normalise,
)
from proxy.testing.simulator.config import (
    FOREVER,
    ServerConfig,
    env_keep_alive,
    parse_go_duration,
    parse_keep_alive,
    parse_ollama_host,
)
from proxy.testing.simulator.models import parse_extra_models
from proxy.testing.simulator.wire import rfc3339_utc


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("smollm2", "smollm2:latest"),
        ("smollm2:135m", "smollm2:135m"),
        ("registry.ollama.ai/library/smollm2:latest", "smollm2:latest"),
        ("library/smollm2", "smollm2:latest"),
        ("myorg/emb:v2", "myorg/emb:v2"),
        ("hf.co/org/model:q4", "hf.co/org/model:q4"),
        ("localhost:5000/ns/model", "localhost:5000/ns/model:latest"),
        ("llama3.2@sha256:abc", "llama3.2:latest"),
    ],
)
def test_normalise(raw: str, display: str) -> None:
    assert normalise(raw) == display


@pytest.mark.parametrize("raw", ["", "a//b", "a/b/c/d", "bad name", ":tag", "x:"])
def test_invalid_names(raw: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        normalise(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("example.com", ("example.com", 11434)),
        ("http://example.com", ("example.com", 80)),
        ("https://example.com", ("example.com", 443)),
        ("http://example.com:9000/path", ("example.com", 9000)),
        (":7000", ("", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        ("::1", ("::1", 11434)),
        ("127.0.0.1:99999", ("127.0.0.1", 11434)),
    ],
)
def test_parse_ollama_host(value: str, expected: tuple[str, int]) -> None:
    assert parse_ollama_host(value) == expected


def test_server_config_defaults() -> None:
    config = ServerConfig.from_env({"HOME": "/home/me", "OLLAMA_HOST": '"0.0.0.0"'})
    assert (config.host, config.port) == ("0.0.0.0", 11434)
    assert config.models_dir == Path("/home/me/.cache/ubiops-ollama-proxy/simulator-models")
    assert config.keep_alive == 300
    assert config.address == "0.0.0.0:11434"
    assert ServerConfig.from_env({"OLLAMA_HOST": ":7000"}).address == "[::]:7000"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"HOME": "/h"}, "/h/.cache/ubiops-ollama-proxy/simulator-models"),
        ({"HOME": "/h", "XDG_CACHE_HOME": "/xdg"}, "/xdg/ubiops-ollama-proxy/simulator-models"),
        ({"HOME": "/h", "XDG_CACHE_HOME": "rel"}, "/h/.cache/ubiops-ollama-proxy/simulator-models"),
        ({"HOME": "/h", "XDG_CACHE_HOME": "/xdg", "OLLAMA_MODELS": "'/m'"}, "/m"),
    ],
)
def test_the_models_directory_is_the_simulators_own_unless_given(
    environ: dict[str, str], expected: str
) -> None:
    """Never a real Ollama's ~/.ollama/models: the simulator would mix fake manifests into it."""
    assert ServerConfig.from_env(environ).models_dir == Path(expected)


def test_faults_settings_come_from_the_fields_that_read_them() -> None:
    shown = {s.name: s.default for s in Faults.settings()}
    assert shown["SIM_PULL_DELAY"] == "0.01"
    assert shown["SIM_PULL_FAILURE_MODE"] == "http500"
    assert shown["SIM_CRASH_AFTER"] == "unset"
    assert len(shown) == len(Faults.__dataclass_fields__)
    for name in shown.keys() - {"SIM_STATE_DIR"}:  # any text is a directory name
        with pytest.raises(ValueError, match=name):
            Faults.from_env({name: "x!"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("-1s", -1), ("250ms", 0.25)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_go_duration_errors_and_keep_alive() -> None:
    with pytest.raises(ValueError, match='missing unit in duration "300"'):
        parse_go_duration("300")
    assert parse_keep_alive(None) is None
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive(-1) == FOREVER
    assert parse_keep_alive("10m") == 600
    assert env_keep_alive("600") == 600
    assert env_keep_alive("-1") == math.inf
    assert env_keep_alive("junk") == 300


def test_rfc3339_like_go() -> None:
    assert rfc3339_utc(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert rfc3339_utc(1_700_000_000_123_400_000) == "2023-11-14T22:13:20.1234Z"


def test_faults_from_env() -> None:
    faults = Faults.from_env({"SIM_PULL_FAILURE_MODE": "cut", "SIM_CRASH_AFTER": "2"})
    assert faults.pull_failure_mode is PullFailureMode.CUT
    assert faults.crash_after == 2
    assert faults.pull_delay == 0.01
    assert faults.num_tokens == 12
    assert faults.state_dir is None
    with pytest.raises(ValueError, match="SIM_PULL_FAILURE_MODE"):
        Faults.from_env({"SIM_PULL_FAILURE_MODE": "explode"})
    with pytest.raises(ValueError, match="SIM_TOKEN_DELAY"):
        Faults.from_env({"SIM_TOKEN_DELAY": "slow"})


def test_extra_models() -> None:
    specs = parse_extra_models("a:b=chat, c=embedding:64")
    assert set(specs) == {"a:b", "c:latest"}
    assert specs["c:latest"].embedding_length == 64
    with pytest.raises(ValueError, match="SIM_EXTRA_MODELS"):
        parse_extra_models("a=vision")


def test_determinism_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = expected_tokens("smollm2", "hi", 12)
    assert tokens == expected_tokens("smollm2:1.7b", "hi", 12)  # same weights, same output
    assert tokens != expected_tokens("smollm2:135m", "hi", 12)
    assert expected_tokens("smollm2", "hi", 4) == tokens[:4]
    assert all(t.startswith(" ") for t in tokens[1:])
    assert not tokens[0].startswith(" ")
    assert expected_text("smollm2", "hi", 12) == "".join(tokens)
    assert expected_tokens("smollm2", [{"role": "user", "content": "hi"}], 3) != tokens[:3]
    assert embedding_dimension("nomic-embed-text") == 768
    vector = expected_embedding("all-minilm:l6-v2", "text")
    assert len(vector) == 384
    assert vector == expected_embedding("all-minilm", "text")
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-5)
    assert embedding_dimension("smollm2:135m") == 576  # a chat model embeds at its hidden size
    with pytest.raises(LookupError):
        embedding_dimension("no-such-model")
    monkeypatch.setenv("SIM_EXTRA_MODELS", "mine:v1=embedding:8")
    assert embedding_dimension("mine:v1") == 8

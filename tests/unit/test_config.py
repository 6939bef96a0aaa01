from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings

KEY = "k" * 24


def test_defaults_follow_the_contract() -> None:
    settings = load_settings({})
    assert settings.ollama_bin == "ollama"
    assert settings.ollama_url == "http://127.0.0.1:11435"
    assert (settings.proxy_host, settings.proxy_port) == ("0.0.0.0", 11434)
    assert settings.proxy_api_key is None
    assert settings.bind_host == "127.0.0.1", "no key: the public port stays on loopback"
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert len(settings.catalog) == 0


def test_a_key_opens_the_configured_host() -> None:
    settings = load_settings({"PROXY_API_KEY": KEY, "PROXY_PORT": "8080"})
    assert settings.bind_host == "0.0.0.0"
    assert settings.local_proxy_url == "http://127.0.0.1:8080"


def test_tutorial_variables_build_the_catalog() -> None:
    settings = load_settings(
        {"OLLAMA_CHAT_MODELS": "smollm2,smollm", "OLLAMA_EMBEDDING_MODELS": "all-minilm:l6-v2"}
    )
    assert [m.tag for m in settings.catalog] == [
        "smollm2:latest",
        "smollm:latest",
        "all-minilm:l6-v2",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("localhost", ("localhost", 11435)),
        ("[::1]:7", ("::1", 7)),
    ],
)
def test_internal_host_accepts_loopback(value: str, expected: tuple[str, int]) -> None:
    settings = load_settings({"OLLAMA_INTERNAL_HOST": value})
    assert (settings.ollama_internal_host, settings.ollama_internal_port) == expected


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OLLAMA_INTERNAL_HOST": "0.0.0.0:11434"}, "OLLAMA_INTERNAL_HOST"),
        ({"OLLAMA_INTERNAL_HOST": "127.0.0.1:99999"}, "OLLAMA_INTERNAL_HOST"),
        ({"PROXY_PORT": "http"}, "PROXY_PORT"),
        ({"PROXY_PORT": "0"}, "PROXY_PORT"),
        ({"PULL_RETRIES": "0"}, "PULL_RETRIES"),
        ({"OLLAMA_START_TIMEOUT": "nan"}, "OLLAMA_START_TIMEOUT"),
        ({"PRELOAD_MODELS": "maybe"}, "PRELOAD_MODELS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"PROXY_API_KEY": "short"}, "PROXY_API_KEY"),
        ({"PROXY_API_KEY": KEY, "PROXY_ADMIN_KEY": KEY}, "PROXY_ADMIN_KEY"),
        ({"OLLAMA_BIN": "  "}, "OLLAMA_BIN"),
        ({"MODEL_ALIASES": "x=missing"}, "MODEL_ALIASES"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.variable == variable


def test_each_models_budget_scales_with_ollama_parallelism_and_its_kind() -> None:
    env = {"OLLAMA_CHAT_MODELS": "a,b", "OLLAMA_EMBEDDING_MODELS": "e", "OLLAMA_NUM_PARALLEL": "3"}
    settings = load_settings(env)
    budgets = {m.configured_as: settings.budget(m) for m in settings.catalog}
    assert budgets == {"a": 12, "b": 12, "e": 24}
    settings = load_settings(
        {**env, "PROXY_MAX_CONCURRENCY": "5", "PROXY_MODEL_CONCURRENCY": "b=2"}
    )
    assert {m.configured_as: settings.budget(m) for m in settings.catalog} == {
        "a": 5,
        "b": 2,
        "e": 5,
    }
    with pytest.raises(ConfigError, match="'x' is not a configured model"):
        load_settings({**env, "PROXY_MODEL_CONCURRENCY": "x=2"})
    with pytest.raises(ConfigError, match="model=N"):
        load_settings({**env, "PROXY_MODEL_CONCURRENCY": "a=0"})


def test_scoped_keys_come_as_json_toml_or_a_file(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"team-a-key-0123456789").hexdigest()
    toml = f'''
[[keys]]
name = "team-a"
sha256 = "{digest}"
models = ["smollm2*"]
apis = ["openai"]
concurrency = 2
weight = 3
'''
    as_json = json.dumps({"keys": [{"name": "team-b", "key": "team-b-key-0123456789"}]})
    path = tmp_path / "keys.toml"
    path.write_text(toml)
    for env in ({"PROXY_KEYS": toml}, {"PROXY_KEYS_FILE": str(path)}):
        (key,) = load_settings(env).keys
        assert (key.name, key.sha256, key.concurrency, key.weight) == ("team-a", digest, 2, 3)
        assert key.secret is None
    settings = load_settings({"PROXY_KEYS": as_json, "PROXY_HOST": "0.0.0.0"})
    assert settings.secrets == ("team-b-key-0123456789",)
    assert settings.bind_host == "0.0.0.0", "keys alone open the port"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("keys = 3", "a list of keys"),
        ('[[keys]]\nname = "a"', "exactly one of key and sha256"),
        ('[[keys]]\nname = "A B"\nkey = "0123456789abcdef"', "name must be"),
        ('[[keys]]\nname = "a"\nkey = "short"', "16 or more"),
        ('[[keys]]\nname = "a"\nsha256 = "abc"', "64 lowercase hex"),
        ('[[keys]]\nname = "a"\nkey = "0123456789abcdef"\napis = ["grpc"]', "apis are"),
        ('[[keys]]\nname = "a"\nkey = "0123456789abcdef"\nweight = 0', "at least 1"),
        ('[[keys]]\nname = "a"\nkey = "0123456789abcdef"\nmodel = ["x"]', "unknown fields"),
        (
            '[[keys]]\nname = "a"\nkey = "0123456789abcdef"\n'
            '[[keys]]\nname = "a"\nkey = "fedcba9876543210"',
            "same name",
        ),
        ("{not json or toml", "neither JSON nor TOML"),
    ],
)
def test_a_bad_keys_document_is_a_config_error(document: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings({"PROXY_KEYS": document})
    assert caught.value.variable == "PROXY_KEYS"
    assert "0123456789abcdef" not in str(caught.value), "never quotes a key"


def test_bad_value_exits_2_with_one_line_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env={"PROXY_PORT": "not-a-port", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PROXY_PORT" in lines[0]

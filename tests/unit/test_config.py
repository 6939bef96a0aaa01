from __future__ import annotations

import subprocess
import sys

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


def test_concurrency_default_scales_with_ollama_parallelism() -> None:
    assert load_settings({"OLLAMA_NUM_PARALLEL": "3"}).proxy_max_concurrency == 12


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

"""The README's direct-access example, run as written with the stock clients against a proxy
serving the README's models: it prints what the same code prints against Ollama (the simulator)
itself."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from proxy_support import API_KEY, pull, serve_proxy

from proxy.catalog import Catalog
from proxy.testing.services import SimulatorProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = '"http://<ip>:11434"'
CATALOG = Catalog.parse("smollm2", "all-minilm:l6-v2")
"""The models the README's examples name."""


def _example() -> str:
    """The Python block after "Direct access through the forwarded port" in the README."""
    section = README.read_text().split("Direct access through the forwarded port", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    assert PLACEHOLDER in found.group(1)
    return found.group(1)


def _run(example: str, url: str) -> list[str]:
    """What the example prints with its URL set to ``url`` (its own ``print``: the in-process
    proxy logs to stdout meanwhile)."""
    printed: list[str] = []

    def record(*values: object) -> None:
        printed.append(" ".join(map(str, values)))

    exec(example.replace(PLACEHOLDER, repr(url)), {"PROXY_API_KEY": API_KEY, "print": record})
    return printed


async def test_the_readme_direct_access_example_runs_as_written(sim: SimulatorProcess) -> None:
    example = _example()
    await pull(sim.url, *(model.tag for model in CATALOG))

    async with serve_proxy(sim.url, catalog=CATALOG) as proxy:
        through_proxy = await asyncio.to_thread(_run, example, proxy.url)
    direct = await asyncio.to_thread(_run, example, sim.url)

    assert through_proxy == direct
    chat, responses, dimension, messages, ollama_chat = through_proxy
    assert dimension == "384"
    assert chat, "a chat answer"
    assert chat == responses == messages == ollama_chat, "one model, one question: one answer"

"""The simulator's shared state: settings, model store, scheduler and fault counters."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .config import ServerConfig
from .counters import Counters
from .faults import Faults
from .logs import log
from .names import ModelName
from .registry import Registry
from .scheduler import Scheduler
from .store import ModelStore, StoredModel

__all__ = ["SIMULATOR", "Simulator"]


@dataclass(slots=True)
class Simulator:
    """Everything a request handler needs; built once per process."""

    config: ServerConfig
    faults: Faults
    registry: Registry
    store: ModelStore
    scheduler: Scheduler
    counters: Counters
    allow_exit: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Simulator:
        """Build from ``OLLAMA_*`` and ``SIM_*`` variables.

        Raises:
            ValueError: a variable is malformed; the message names it.
        """
        config = ServerConfig.from_env(environ)
        faults = Faults.from_env(environ)
        return cls(
            config=config,
            faults=faults,
            registry=Registry.from_env(environ),
            store=ModelStore(config.models_dir),
            scheduler=Scheduler(config.keep_alive, faults.load_delay),
            counters=Counters(faults),
        )

    def find(self, raw: str) -> StoredModel | None:
        """The stored model named ``raw`` (any spelling), if present."""
        name = ModelName.parse(raw)
        return None if name is None else self.store.get(name)

    def crash(self) -> None:
        """Die abruptly with status 1, as a crashed ``ollama serve`` would (``SIM_CRASH_AFTER``)."""
        if not self.allow_exit:
            raise RuntimeError(
                "simulated crash requested (SIM_CRASH_AFTER) in an in-process server"
            )
        log("ERROR", "server.go:1", "simulated crash", fault="SIM_CRASH_AFTER")
        sys.stderr.write("panic: simulated runner crash (SIM_CRASH_AFTER)\n")
        sys.stderr.flush()
        os._exit(1)


SIMULATOR = web.AppKey("simulator", Simulator)

"""``ollama-sim serve``: start like ``ollama serve`` (logs, start faults), then serve."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping

from aiohttp import web

from .app import create_app
from .logs import log
from .runtime import Simulator
from .version import VERSION

__all__ = ["serve"]

_SHUTDOWN_TIMEOUT = 0.1


async def serve(environ: Mapping[str, str]) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        sim = Simulator.from_env(environ)
    except ValueError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    config, faults = sim.config, sim.faults
    env = " ".join(
        f"{k}:{v}" for k, v in sorted(environ.items()) if k.startswith(("OLLAMA_", "SIM_"))
    )
    log("INFO", "routes.go:1574", "server config", env=f"map[{env}]")
    log("INFO", "images.go:522", f"total blobs: {sim.store.blob_count()}")
    log("INFO", "images.go:529", "total unused blobs removed: 0")
    if faults.start_delay > 0:
        try:
            await asyncio.wait_for(stop.wait(), faults.start_delay)
        except TimeoutError:
            pass
        else:
            return 0
    if faults.exit_at_start is not None:
        sys.stderr.write(f"Error: listen tcp {config.address}: simulated start failure\n")
        return faults.exit_at_start
    runner = web.AppRunner(
        create_app(simulator=sim), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host or None, config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = (
            "bind: address already in use" if "in use" in str(exc) else str(exc.strerror or exc)
        )
        sys.stderr.write(f"Error: listen tcp {config.address}: {reason}\n")
        return 1
    host, port = runner.addresses[0][:2]
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log("INFO", "routes.go:1625", f"Listening on {bound} (version {VERSION})")
    log("INFO", "runner.go:80", "discovering available GPUs...")
    log(
        "INFO",
        "types.go:60",
        "inference compute",
        id="cpu",
        library="cpu",
        compute="",
        name="cpu",
        description="cpu",
        total="15.5 GiB",
        available="14.2 GiB",
    )
    await stop.wait()
    await runner.cleanup()
    return 0

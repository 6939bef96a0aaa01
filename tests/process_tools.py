"""Process and polling helpers shared by the subprocess-heavy suites."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant; ignore what is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def is_sim(proc: psutil.Process) -> bool:
    """Whether ``proc`` is an Ollama simulator (``ollama-sim``)."""
    try:
        return any("ollama-sim" in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def sims_using(models_dir: Path) -> list[psutil.Process]:
    """Live simulator processes whose OLLAMA_MODELS is ``models_dir`` (orphan detection)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if not is_sim(proc) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("OLLAMA_MODELS") == str(models_dir):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found

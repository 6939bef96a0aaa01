"""Profile the proxy's hot path:
``python -m bench.profile_proxy [chat|messages|embeddings|stream]``.

Starts the proxy under ``cProfile`` in front of a zero-delay simulator, saturates it with the
load generator for ``--seconds``, stops it with SIGTERM (it exits cleanly, so the profile is
written), and prints the functions with the most own time and the most cumulative time. Not
part of ``python -m bench``: a tool for when a figure needs explaining.
"""

from __future__ import annotations

import argparse
import io
import pstats
import tempfile
from pathlib import Path

from bench.context import SHORT_TOKENS, STREAM_TOKENS, chat_body, embed_body, messages_body
from bench.loadgen import LoadGen
from bench.measure import saturate
from bench.stack import ProxyStack

_KINDS = {
    "chat": ("/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS), False),
    "messages": ("/v1/messages", messages_body(max_tokens=SHORT_TOKENS), False),
    "embeddings": ("/v1/embeddings", embed_body(), False),
    "stream": ("/v1/chat/completions", chat_body(stream=True), True),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_proxy")
    parser.add_argument("kind", choices=sorted(_KINDS), nargs="?", default="chat")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    path, body, stream = _KINDS[args.kind]
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out = workdir / "proxy.prof"
    stack = ProxyStack(
        workdir,
        {"SIM_NUM_TOKENS": str(STREAM_TOKENS)},
        python_args=("-m", "cProfile", "-o", str(out)),
        name="profile",
    )
    with LoadGen() as lg:
        stack.start()
        try:
            run = saturate(
                lg,
                stack.proxy(),
                path,
                body,
                concurrency=args.concurrency,
                warmup_s=0.5,
                duration_s=args.seconds,
                stream=stream,
                watch={"proxy": [stack.proxy_pid]},
            )
        finally:
            stack.stop()
    count = run.chunks if stream else run.requests
    print(
        f"{args.kind}: {count} {'chunks' if stream else 'requests'} in {run.window_s:.1f} s "
        f"under cProfile (slower than normal); profile: {out}"
    )
    for sort in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(str(out), stream=buffer).strip_dirs().sort_stats(sort).print_stats(args.top)
        print(f"\n== by {sort}\n" + buffer.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()

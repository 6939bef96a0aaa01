"""UbiOps deployment: many Ollama models, OpenAI-compatible, behind one local proxy.

UbiOps runs this class in every request process of an instance (``instance_processes``).
Process 0 also starts the proxy (``python -m proxy serve``: it runs ``ollama serve``, pulls the
models of OLLAMA_CHAT_MODELS and OLLAMA_EMBEDDING_MODELS, and serves the OpenAI API) and
restarts it if it dies. Every process waits until the proxy is ready, then forwards each request
to it over one keep-alive loopback connection and relays streamed chunks as they arrive.

Request input (plain): an OpenAI body, as JSON text or a dict. ``messages`` goes to chat
completions, ``prompt`` to completions, ``input`` to embeddings. With ``"stream": true`` every
chunk is sent through ``streaming_update`` and the result is the JSON list of chunks; otherwise
the result is the OpenAI response JSON. Errors come back as the request's error message, in the
proxy's words (the same as through its port).
"""

from proxy.config import load_settings
from proxy.client import ProxyClient
from proxy.launcher import ProxyLauncher
from proxy.logs import configure_logging, get_logger

log = get_logger("deployment")


class Deployment:
    def __init__(self, base_directory, context):
        # No process_id: a single-process instance (or run_local), which runs the proxy itself.
        process_id = int(context.get("process_id", 0))
        settings = load_settings()
        configure_logging(
            settings.log_format,
            settings.log_level,
            secrets=(settings.proxy_api_key, settings.proxy_admin_key),
            component="deployment",
            process_id=str(process_id),
        )
        self._launcher = ProxyLauncher(settings) if process_id == 0 else None
        self._client = ProxyClient(settings)
        try:
            if self._launcher is not None:
                self._launcher.start()
            check = self._launcher.check if self._launcher is not None else None
            self._client.wait_ready(check=check)
        except BaseException:
            self.stop()
            raise
        log.info("deployment process ready", models=", ".join(settings.catalog.names))

    def request(self, data, context):
        return self._client.forward(data, context.get("streaming_update"))

    def stop(self):
        self._client.close()
        if self._launcher is not None:
            self._launcher.stop()

"""UbiOps deployment: many Ollama models, OpenAI-compatible, behind one local proxy.

UbiOps runs this class in every request process of an instance (``instance_processes``), and
also builds it once when it validates a new version ("checking if initialisation of the
deployment class succeeds"). Process 0 starts the proxy (``python -m proxy serve``: it runs
``ollama serve``, pulls the models of OLLAMA_CHAT_MODELS and OLLAMA_EMBEDDING_MODELS, and serves
the OpenAI API) and restarts it if it dies. ``__init__`` returns once the proxy serves, or once
models are being downloaded, or after at most two minutes, so neither a validation nor a cold
start waits for a download; it fails only when the model server cannot start at all. Until the
proxy serves, a request fails at once with a message that says it is starting and why.

Request input (plain): an API body as JSON text. ``messages`` goes to chat completions,
``prompt`` to completions, ``input`` to the Responses API (chat model) or embeddings (embedding
model); an ``"endpoint"`` field names the endpoint outright (``"/v1/messages"``: Anthropic's
Messages API) and is not sent on. With ``"stream": true`` every event's JSON text is sent through
``streaming_update`` and the result is the JSON list of them (a streamed chat asks for token
usage, so its last chunk has ``usage`` and no choices); otherwise the result is the API's
response JSON. Errors come back as the request's error message, in the proxy's words (the same
as through its port).
"""

from proxy.client import ProxyClient
from proxy.config import load_settings
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
            started = self._client.wait_started(check=check)
        except BaseException:
            self.stop()
            raise
        log.info(
            "deployment process initialised",
            proxy=started,
            models=", ".join(settings.catalog.names),
        )

    def request(self, data, context):
        return self._client.forward(data, context.get("streaming_update"))

    def stop(self):
        self._client.close()
        if self._launcher is not None:
            self._launcher.stop()

"""The UbiOps multi-model tutorial's ``Deployment``, rebuilt as the baseline of scenario 4.

Copied from the seed (``ubiops-ollama-multi-model-tutorial.md``, section 3.4) with two changes
only, both needed to point it at the bench's backend: the OpenAI client's ``base_url`` and
``api_key`` come from the environment (``BENCH_OPENAI_BASE_URL``, ``BENCH_OPENAI_API_KEY``;
defaults are the tutorial's own), and process 0 starting Ollama is left out (the bench starts
the backend itself). ``request()`` is the tutorial's, line for line: the ``openai`` client,
``chunk.model_dump()`` and ``json.dumps`` per chunk.
"""

# ruff: noqa: RET505, PTH, UP
from __future__ import annotations

import json
import os
import subprocess
import time

from openai import OpenAI


class PublicError(Exception):
    def __init__(self, public_error_message):
        super().__init__()
        self.public_error_message = public_error_message


class Deployment:
    def __init__(self, base_directory, context):
        print("Initializing deployment...")

        # Parse models from environment variables
        self.embedding_models = self._parse_models_env("OLLAMA_EMBEDDING_MODELS")
        self.chat_models = self._parse_models_env("OLLAMA_CHAT_MODELS")

        # Create model type mapping
        self.model_types = {}
        for model in self.embedding_models:
            self.model_types[model] = "embedding"
        for model in self.chat_models:
            self.model_types[model] = "chat"

        print(
            f"Loaded {len(self.embedding_models)} embedding models, "
            f"{len(self.chat_models)} chat models"
        )

        # Initialize OpenAI client (bench: base URL and key from the environment)
        self.client = OpenAI(
            base_url=os.environ.get("BENCH_OPENAI_BASE_URL", "http://localhost:11434/v1"),
            api_key=os.environ.get("BENCH_OPENAI_API_KEY", "ollama"),
        )
        self.environment_variables = {"OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_HOST": "0.0.0.0:11434"}

        # Initialize server and models (only in main process)
        if context.get("process_id") == 0:
            self._start_ollama_server()
            print("Deployment ready")

    def request(self, data, context):
        """Process requests and route to appropriate model type."""
        input_data = json.loads(data) if isinstance(data, str) else data

        model_name = input_data.get("model")
        model_type = self.model_types[model_name]

        # Route request based on model type
        if model_type == "embedding":
            response = self.client.embeddings.create(**input_data)
            return response.model_dump()
        else:  # chat model
            if input_data.get("stream", False):
                response = self.client.chat.completions.create(**input_data)
                full_response = []
                for chunk in response:
                    chunk_data = chunk.model_dump()
                    context["streaming_update"](json.dumps(chunk_data))
                    full_response.append(chunk_data)
                return full_response
            else:
                response = self.client.chat.completions.create(**input_data)
                return response.model_dump()

    def _parse_models_env(self, environment_variable):
        """Parse comma-separated model names from environment variable."""
        models_string = os.environ.get(environment_variable, "")
        return [model.strip() for model in models_string.split(",") if model.strip()]

    def _start_ollama_server(self):
        """Start the Ollama server process (the tutorial's fixed 3 s sleep included)."""
        print("Starting Ollama server...")
        subprocess.Popen(["ollama", "serve"], env=self.environment_variables | os.environ)
        time.sleep(3)

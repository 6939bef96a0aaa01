"""The Ollama release whose wire behaviour the simulator reproduces."""

VERSION = "0.32.15"

"""Serve Ollama models behind UbiOps: supervisor, authenticated proxy, testing utilities."""

"""Testing utilities shipped with the package: a faithful Ollama simulator and network helpers."""

"""Benchmarks of the proxy against the Ollama simulator: run ``python -m bench``.

Every figure is measured side by side with its baseline in the same run; see ``__main__``.
"""

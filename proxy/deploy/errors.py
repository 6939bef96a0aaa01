"""The one error type the deploy command reports: a line of text, optional detail, exit 1."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DeployError"]


class DeployError(Exception):
    """A failure shown to the user as one line (plus ``detail`` lines, e.g. a build log tail).

    The command line prints ``error: <message>`` and the detail to stderr and exits with status 1,
    never with a traceback.
    """

    def __init__(self, message: str, detail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.detail = tuple(detail)

"""The UbiOps API token: read it, normalise it, never show it."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.deploy.errors import DeployError

__all__ = ["TOKEN_PREFIX", "TOKEN_VARIABLE", "authorization_header", "read_token"]

TOKEN_VARIABLE = "UBIOPS_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
TOKEN_PREFIX = "Token "  # noqa: S105 (the header scheme, not a secret)


def read_token(environ: Mapping[str, str]) -> str:
    """Return the bare token from ``UBIOPS_API_TOKEN``, with or without its ``Token `` prefix.

    Only the exact prefix is removed (``str.removeprefix``, not ``lstrip``, which strips a *set*
    of characters and would turn ``ok12…`` into ``12…``).

    Raises:
        DeployError: the variable is unset or empty. The message never contains the value.
    """
    text = environ.get(TOKEN_VARIABLE, "").strip()
    bare = text.removeprefix(TOKEN_PREFIX).strip()
    if not bare or text == TOKEN_PREFIX.strip():
        raise DeployError(
            f"{TOKEN_VARIABLE} is not set: export a UbiOps API token "
            "(https://ubiops.com/docs/organizations/service-users/)"
        )
    return bare


def authorization_header(token: str) -> str:
    """The ``Authorization`` header value the UbiOps API expects for ``token``."""
    return TOKEN_PREFIX + token

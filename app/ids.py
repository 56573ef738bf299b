"""Opaque, prefixed, URL-safe identifiers."""

import secrets

ID_PREFIXES = ("ses", "run", "hook", "snap", "dlv", "key", "apr", "agt")


def new_id(prefix: str) -> str:
    """Return `<prefix>_<random>` with 120 bits of randomness."""
    return f"{prefix}_{secrets.token_urlsafe(15)}"

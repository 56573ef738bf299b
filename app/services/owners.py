"""Which owner's namespace a request addresses."""

from __future__ import annotations

from app.auth import Principal
from app.errors import Forbidden


class Namespace(str):
    """An owner's name as one caller addresses it; `by_admin` tells whether that caller is
    an admin, who may be told which other owners hold a resource it did not find."""

    by_admin: bool = False

    @classmethod
    def of(cls, owner: str, by_admin: bool) -> Namespace:
        namespace = cls(owner)
        namespace.by_admin = by_admin
        return namespace


def resolve_owner(principal: Principal, owner: str | None) -> Namespace:
    """The caller's own namespace, or with `?owner=` (admins only) another subject's."""
    if owner is None or owner == principal.subject:
        return Namespace.of(principal.subject, principal.is_admin)
    if not principal.is_admin:
        raise Forbidden("only admins may address another owner's resources with `owner`")
    return Namespace.of(owner, True)

"""Which owner's namespace a request addresses."""

from app.auth import Principal
from app.errors import Forbidden


def resolve_owner(principal: Principal, owner: str | None) -> str:
    """The caller's own namespace, or with `?owner=` (admins only) another subject's."""
    if owner is None or owner == principal.subject:
        return principal.subject
    if not principal.is_admin:
        raise Forbidden("only admins may address another owner's resources with `owner`")
    return owner

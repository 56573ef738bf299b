"""Who is calling: the admin token, an API key, or (open mode) nobody, who is the admin."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.errors import Forbidden, Unauthorized
from app.services.keys import find_key

ADMIN_SUBJECT = "admin"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    subject: str
    role: str
    open_mode: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this route is for admins only")

    def can_see(self, owner: str) -> bool:
        """Users see their own resources; admins see everyone's."""
        return self.is_admin or owner == self.subject


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be `Bearer <token>`")
    return token.strip()


async def authenticate(db: AsyncSession, settings: Settings, token: str | None) -> Principal:
    """Resolve a bearer token (or its absence) to a principal, or raise 401."""
    open_mode = settings.open_mode
    if token is None:
        if open_mode:
            return Principal(ADMIN_SUBJECT, "admin", open_mode=True)
        raise Unauthorized("a bearer token is required")
    if settings.admin_token is not None and hmac.compare_digest(
        token.encode(), settings.admin_token.encode()
    ):
        return Principal(ADMIN_SUBJECT, "admin", open_mode=False)
    key = await find_key(db, token)
    if key is None:
        raise Unauthorized("the bearer token is not valid")
    return Principal(key.subject, key.role, open_mode=open_mode)

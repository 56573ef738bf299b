"""The registration-time check of hook and tool URLs: no private or metadata addresses.

The same rules apply again at connect time, on every request and redirect
(`app.tools.net.GuardedTransport`), since a name can be made to resolve elsewhere later.
"""

from __future__ import annotations

from app.config import PrivateUrls
from app.tools.net import BlockedUrl, HostPolicy, check_url


class PrivateUrl(ValueError):
    """The URL points at an address the service must not reach."""


async def check_public_url(url: str, allowed: PrivateUrls | None = None) -> None:
    """Raise `PrivateUrl` when `url`'s host is, or resolves to, an address that is not
    public and not `allowed` (`LOOMD_ALLOW_PRIVATE_URLS`), or is a cloud metadata address.

    A name that does not resolve now is let through: the call-time check sees it again.
    """
    try:
        private = allowed if allowed is not None else PrivateUrls()
        await check_url(HostPolicy(hosts=None, private=private), url)
    except BlockedUrl as exc:
        raise PrivateUrl(str(exc)) from exc

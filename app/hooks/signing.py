"""Standard Webhooks signatures of every request loomd sends to a hook or an `http` tool."""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def signed_headers(secret: str, message_id: str, body: str,
                   now: datetime | None = None) -> dict[str, str]:
    """The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers of `body`.

    `message_id` stays the same across the attempts of one delivery, so receivers can
    dedupe on it.
    """
    moment = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, moment, body),
        "content-type": "application/json",
    }

"""The owner's tool secret, which signs its `http` tool calls."""

from __future__ import annotations

from pydantic import Field

from app.schemas.common import ResponseModel, Timestamp


class ToolSecretCreated(ResponseModel):
    owner: str = Field(examples=["alice"])
    secret: str = Field(
        description="the signing key (`whsec_` + base64); shown only in this response",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    created_at: Timestamp


class ToolSecret(ResponseModel):
    owner: str = Field(examples=["alice"])
    created_at: Timestamp
    secret_prefix: str = Field(description="the first characters of the secret, to tell "
                               "secrets apart", examples=["whsec_MfKQ"])

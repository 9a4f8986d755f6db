"""The optional API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`, as HTTP headers
or as gRPC metadata (lower-case keys either way)."""

import hmac
from collections.abc import Mapping

from pydantic import SecretStr

from .errors import Unauthorized


def check_key(headers: Mapping[str, str], key: SecretStr | None) -> None:
    """Pass when no key is configured or the request carries it; compared in constant time."""
    if key is None:
        return
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None:
        raise Unauthorized(
            "this server needs an API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise Unauthorized("the API key is wrong")

"""The API key check (service/auth.py), on HTTP headers and gRPC metadata alike, without a
server."""

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers

from service.auth import check_key
from service.errors import Unauthorized

KEY = SecretStr("s3cret")


def http(**headers: str) -> Headers:
    """Starlette's case-insensitive headers, as an HTTP request carries them."""
    return Headers({k.replace("_", "-"): v for k, v in headers.items()})


@pytest.mark.parametrize(
    "headers",
    [
        http(Authorization="Bearer s3cret"),
        http(Authorization="bearer  s3cret "),
        http(X_API_Key="s3cret"),
        {"x-api-key": "s3cret"},  # gRPC metadata: a plain dict, lower-case keys
        {"authorization": "Bearer s3cret"},
    ],
)
def test_the_key_passes_in_either_header(headers):
    check_key(headers, KEY)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        (http(), "this server needs an API key"),
        (http(Authorization="Basic s3cret"), "this server needs an API key"),
        (http(Authorization="Bearer guess"), "the API key is wrong"),
        (http(X_API_Key="s3cre"), "the API key is wrong"),
        (http(X_API_Key="wrong", Authorization="Bearer s3cret"), "the API key is wrong"),
        ({"x-api-key": "guess"}, "the API key is wrong"),
    ],
)
def test_a_missing_or_wrong_key_is_a_401_with_a_bearer_challenge(headers, says):
    with pytest.raises(Unauthorized) as raised:
        check_key(headers, KEY)
    error = raised.value
    assert (error.status, error.grpc) == (401, "UNAUTHENTICATED") and says in error.message
    assert error.headers == {"WWW-Authenticate": "Bearer"}


def test_without_a_configured_key_everything_passes():
    check_key(http(), None)

"""The API key check (service/auth.py) on real Starlette requests, without a server."""

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from service.auth import check_api_key
from service.errors import Unauthorized

KEY = SecretStr("s3cret")


def request(**headers: str) -> Request:
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "bearer  s3cret "},
        {"X_API_Key": "s3cret"},
    ],
)
def test_the_key_passes_in_either_header(headers):
    check_api_key(request(**headers), KEY)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "this server needs an API key"),
        ({"Authorization": "Basic s3cret"}, "this server needs an API key"),
        ({"Authorization": "Bearer guess"}, "the API key is wrong"),
        ({"X_API_Key": "s3cre"}, "the API key is wrong"),
        ({"X_API_Key": "wrong", "Authorization": "Bearer s3cret"}, "the API key is wrong"),
    ],
)
def test_a_missing_or_wrong_key_is_a_401_with_a_bearer_challenge(headers, says):
    with pytest.raises(Unauthorized) as raised:
        check_api_key(request(**headers), KEY)
    assert raised.value.status_code == 401 and says in raised.value.detail
    assert raised.value.headers == {"WWW-Authenticate": "Bearer"}


def test_without_a_configured_key_everything_passes():
    check_api_key(request(), None)

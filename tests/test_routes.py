"""The route table (service/routes.py): every route has a handler, the patterns tell a wrong
method from a wrong path, and the hot routes are exactly the inference POSTs."""

import pytest

from service.routes import MODEL_ROUTES, allowed_methods
from service.spec import KServeSpec


def test_every_route_names_a_handler_of_the_spec():
    for route in MODEL_ROUTES:
        assert callable(getattr(KServeSpec, route.handler)), route


def test_the_hot_routes_are_the_inference_posts():
    hot = {(r.method, r.path) for r in MODEL_ROUTES if r.hot}
    assert hot == {
        ("POST", "/v1/models/{model}:predict"),
        ("POST", "/v2/models/{model}/infer"),
        ("POST", "/v2/models/{model}/versions/{version}/infer"),
    }
    assert all(r.request is not None for r in MODEL_ROUTES if r.hot)


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/models/mlp:predict", ["POST"]),
        ("/v1/models/mlp", ["GET"]),
        ("/v2/models/any-name/infer", ["POST"]),
        ("/v2/models/mlp/versions/7/infer", ["POST"]),
        ("/v2/models/mlp/versions/7", ["GET"]),
        ("/v2/models/mlp/ready", ["GET"]),
        ("/v2/models/mlp/infer/more", []),
        ("/v2/models/mlp/versions", []),
        ("/v3/models/mlp", []),
    ],
)
def test_allowed_methods_by_path(path, methods):
    assert allowed_methods(path) == methods


def test_a_concrete_path_names_the_model_and_version():
    versioned = next(r for r in MODEL_ROUTES if "{version}" in r.path and r.hot)
    assert versioned.concrete("mlp", 3) == "/v2/models/mlp/versions/3/infer"

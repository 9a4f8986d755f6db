"""The route table (service/routes.py): every route has a handler, and the hot routes are
exactly the inference POSTs."""

import inspect

from service.rest import ModelRoutes
from service.routes import MODEL_ROUTES


def test_every_route_names_a_coroutine_of_the_http_adapter_taking_the_paths_parameters():
    for route in MODEL_ROUTES:
        handler = getattr(ModelRoutes, route.handler)
        assert inspect.iscoroutinefunction(handler), route
        parameters = list(inspect.signature(handler).parameters)
        # FastAPI fills {version} from the path; {model} is fixed per ModelRoutes
        assert parameters[:2] == ["self", "request"], route
        if "{version}" in route.path:
            assert "version" in parameters, route


def test_the_hot_routes_are_the_inference_posts():
    hot = {(r.method, r.path) for r in MODEL_ROUTES if r.hot}
    assert hot == {
        ("POST", "/v1/models/{model}:predict"),
        ("POST", "/v2/models/{model}/infer"),
        ("POST", "/v2/models/{model}/versions/{version}/infer"),
    }
    assert all(r.request is not None for r in MODEL_ROUTES if r.hot)


def test_a_concrete_path_names_the_model_and_version():
    versioned = next(r for r in MODEL_ROUTES if "{version}" in r.path and r.hot)
    assert versioned.concrete("mlp", 3) == "/v2/models/mlp/versions/3/infer"

"""The fast path's route lookup (service/fastpath.py): exactly the hot routes of the served
models, any version number, nothing else."""

from functools import partial

import pytest
from planes import MODEL, Plane

from service.fastpath import InferenceFastPath
from service.rest import ModelRoutes


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    plane = Plane(tmp_path_factory.mktemp("repository")).plane
    routes = ModelRoutes(plane.models[MODEL], plane)
    return InferenceFastPath(app=None, specs=[routes]), routes


@pytest.mark.parametrize(
    ("path", "handler", "version"),
    [
        (f"/v1/models/{MODEL}:predict", "v1_predict", None),
        (f"/v2/models/{MODEL}/infer", "v2_infer", None),
        (f"/v2/models/{MODEL}/versions/7/infer", "v2_infer", "7"),
        (f"/v2/models/{MODEL}/versions/123456/infer", "v2_infer", "123456"),
    ],
)
def test_a_hot_route_finds_its_handler_with_the_version_from_the_path(fast, path, handler, version):
    lookup, routes = fast
    found = lookup.find("POST", path)
    if version is None:
        assert found == getattr(routes, handler)
    else:
        assert isinstance(found, partial) and found.keywords == {"version": version}
        assert found.func == getattr(routes, handler)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v2/models/{MODEL}/infer"),  # a method it does not answer
        ("POST", f"/v2/models/{MODEL}/versions/x/infer"),  # not a version number
        ("POST", f"/v2/models/{MODEL}/versions//infer"),
        ("POST", f"/v2/models/{MODEL}/versions/1/2/infer"),
        ("POST", "/v2/models/other/infer"),  # a model not served
        ("POST", f"/v2/models/{MODEL}/infer/"),  # a trailing slash
        ("GET", f"/v2/models/{MODEL}"),  # metadata goes through FastAPI
    ],
)
def test_anything_else_goes_to_fastapi(fast, method, path):
    lookup, _ = fast
    assert lookup.find(method, path) is None

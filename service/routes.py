"""Every endpoint of a model, declared once. The spec registers them with FastAPI from this
table, the fast path answers the hot ones past FastAPI, and the OpenAPI document describes them
from it."""

from collections.abc import Callable
from typing import NamedTuple

from pydantic import BaseModel

from . import schemas
from .errors import (
    BadRequest,
    InferenceFailed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Timeout,
    Unauthorized,
    UnsupportedMedia,
)
from .protocol import Signature

# What any inference request may meet besides a 200.
INFER_ERRORS = (
    BadRequest,
    Unauthorized,
    NotFound,
    PayloadTooLarge,
    UnsupportedMedia,
    InferenceFailed,
    Overloaded,
    Timeout,
)


class Route(NamedTuple):
    method: str
    path: str  # with {model}, and {version} where a version may be named
    handler: str  # the ModelRoutes method (rest.py) that answers it
    response: type[BaseModel]  # a 200's JSON body
    request: Callable[[Signature], dict] | None = None  # the model's request JSON Schema
    binary: bool = False  # also takes and gives the V2 binary tensor extension
    errors: tuple[type[ServiceError], ...] = (Unauthorized, NotFound)
    hot: bool = False  # the fast path (fastpath.py) answers it, past FastAPI's machinery

    def concrete(self, model: str, version: int) -> str:
        return self.path.format(model=model, version=version)


V1 = "/v1/models/{model}"
V2 = "/v2/models/{model}"
V2_VERSION = V2 + "/versions/{version}"
READY_ERRORS = (NotFound, Overloaded)  # 503 while the model loads or restarts; no key needed

MODEL_ROUTES: tuple[Route, ...] = (
    Route("POST", V1 + ":predict", "v1_predict", schemas.V1Response, schemas.v1_request,
          errors=INFER_ERRORS, hot=True),
    Route("GET", V1, "v1_status", schemas.ModelReady, errors=READY_ERRORS),
    Route("POST", V2 + "/infer", "v2_infer", schemas.V2InferResponse, schemas.v2_request,
          binary=True, errors=INFER_ERRORS, hot=True),
    Route("POST", V2_VERSION + "/infer", "v2_infer", schemas.V2InferResponse,
          schemas.v2_request, binary=True, errors=INFER_ERRORS, hot=True),
    Route("GET", V2, "v2_metadata", schemas.V2ModelMetadata),
    Route("GET", V2_VERSION, "v2_metadata", schemas.V2ModelMetadata),
    Route("GET", V2 + "/config", "v2_config", schemas.TritonModelConfig),
    Route("GET", V2_VERSION + "/config", "v2_config", schemas.TritonModelConfig),
    Route("GET", V2 + "/stats", "v2_stats", schemas.TritonStatistics),
    Route("GET", V2_VERSION + "/stats", "v2_stats", schemas.TritonStatistics),
    Route("GET", V2 + "/ready", "v2_ready", schemas.ModelReady, errors=READY_ERRORS),
    Route("GET", V2_VERSION + "/ready", "v2_ready", schemas.ModelReady, errors=READY_ERRORS),
)  # fmt: skip

"""Every endpoint of a model, declared once. The spec registers them with FastAPI from this
table, the fast path answers the hot ones past FastAPI, the OpenAPI document describes them
from it, and the catch-all tells a wrong method (405) from a wrong path (404) by it."""

import re
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
    handler: str  # the KServeSpec method that answers it
    response: type[BaseModel]  # a 200's JSON body
    request: type[BaseModel] | None = None  # the JSON body it takes
    binary: bool = False  # also takes and gives the V2 binary tensor extension
    errors: tuple[type[ServiceError], ...] = (Unauthorized, NotFound)
    hot: bool = False  # the fast path (fastpath.py) answers it, past FastAPI's machinery

    def concrete(self, model: str, version: int) -> str:
        return self.path.format(model=model, version=version)

    def pattern(self) -> re.Pattern:
        """Matches the path for any model and version name."""
        escaped = re.escape(self.path).replace(r"\{model\}", "{model}")
        escaped = escaped.replace(r"\{version\}", "{version}")
        return re.compile(escaped.format(model="[^/:]+", version="[^/]+") + "$")


V1 = "/v1/models/{model}"
V2 = "/v2/models/{model}"
V2_VERSION = V2 + "/versions/{version}"
READY_ERRORS = (NotFound, Overloaded)  # 503 while the model loads or restarts; no key needed

MODEL_ROUTES: tuple[Route, ...] = (
    Route("POST", V1 + ":predict", "v1_predict", schemas.V1Response, schemas.V1Request,
          errors=INFER_ERRORS, hot=True),
    Route("GET", V1, "v1_status", schemas.ModelReady),
    Route("POST", V2 + "/infer", "v2_infer", schemas.V2InferResponse, schemas.V2InferRequest,
          binary=True, errors=INFER_ERRORS, hot=True),
    Route("POST", V2_VERSION + "/infer", "v2_infer", schemas.V2InferResponse,
          schemas.V2InferRequest, binary=True, errors=INFER_ERRORS, hot=True),
    Route("GET", V2, "v2_metadata", schemas.V2ModelMetadata),
    Route("GET", V2_VERSION, "v2_metadata", schemas.V2ModelMetadata),
    Route("GET", V2 + "/config", "v2_config", schemas.TritonModelConfig),
    Route("GET", V2_VERSION + "/config", "v2_config", schemas.TritonModelConfig),
    Route("GET", V2 + "/stats", "v2_stats", schemas.TritonStatistics),
    Route("GET", V2_VERSION + "/stats", "v2_stats", schemas.TritonStatistics),
    Route("GET", V2 + "/ready", "v2_ready", schemas.ModelReady, errors=READY_ERRORS),
    Route("GET", V2_VERSION + "/ready", "v2_ready", schemas.ModelReady, errors=READY_ERRORS),
)  # fmt: skip
PATTERNS = [(route, route.pattern()) for route in MODEL_ROUTES]


def allowed_methods(path: str) -> list[str]:
    """The methods some model route takes at `path` (any model name): empty for no route."""
    return sorted({route.method for route, pattern in PATTERNS if pattern.match(path)})

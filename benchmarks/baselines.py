"""The servers tensorgate is measured against, each as a user of the seed tutorials would write
it. Every one takes the same V1 body, {"instances": [...]}, on /v1/models/<model>:predict.

    python -m benchmarks.baselines floor|naive-def|naive-async --models mlp resnet --port P
    python -m benchmarks.baselines litserve --models mlp --port P [--runs runs]
"""

import argparse
import json
from pathlib import Path
from typing import Any

import litserve as ls
import torch
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel

from training import load_checkpoint
from training.checkpoint import CHECKPOINT_NAME
from training.registry import ALL_MODELS

CONSTANT = {"predictions": [{"label": "0", "index": 0, "probabilities": [1.0, 0.0]}]}


def load_models(runs: Path, names: list[str]) -> dict[str, torch.nn.Module]:
    torch.set_num_threads(1)  # as the service's workers: 1 thread beat 2 on 2 cores
    return {name: load_checkpoint(runs / name / CHECKPOINT_NAME)[1] for name in names}


def predict(model: torch.nn.Module, instances: Any) -> dict:
    with torch.inference_mode():
        probabilities = model(torch.tensor(instances, dtype=torch.float32))
    return {"predictions": probabilities.tolist()}


def floor_app() -> FastAPI:
    """The HTTP floor: parses the same JSON body, infers nothing, answers a constant."""
    app = FastAPI()

    @app.post("/v1/models/{model}:predict")
    async def infer(model: str, request: Request) -> dict:
        json.loads(await request.body())
        return CONSTANT

    @app.get("/ready")
    async def ready() -> dict:
        return {}

    return app


class Body(BaseModel):
    instances: list[Any]


def naive_def_app(runs: Path, names: list[str]) -> FastAPI:
    """FastAPI's usual form: a `def` endpoint with a pydantic body, one forward per request."""
    models, app = load_models(runs, names), FastAPI()

    @app.post("/v1/models/{model}:predict")
    def infer(model: str, body: Body) -> dict:
        return predict(models[model], body.instances)

    @app.get("/ready")
    def ready() -> dict:
        return {}

    return app


def naive_async_app(runs: Path, names: list[str]) -> FastAPI:
    """The faster naive form: `async def`, parsing the body itself, forward on the event loop."""
    models, app = load_models(runs, names), FastAPI()

    @app.post("/v1/models/{model}:predict")
    async def infer(model: str, request: Request) -> dict:
        return predict(models[model], json.loads(await request.body())["instances"])

    @app.get("/ready")
    async def ready() -> dict:
        return {}

    return app


class PlainAPI(ls.LitAPI):
    """Plain LitServe as its docs show it: one LitAPI with an eager model."""

    def __init__(self, runs: Path, name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.runs, self.name = runs, name

    def setup(self, device: str) -> None:
        self.model = load_models(self.runs, [self.name])[self.name]

    def decode_request(self, request: dict) -> torch.Tensor:
        return torch.tensor(request["instances"][0], dtype=torch.float32)

    def predict(self, x: torch.Tensor) -> list:
        with torch.inference_mode():
            return self.model(x).tolist()

    def encode_response(self, output: list) -> dict:
        return {"predictions": [output]}


def run_litserve(runs: Path, name: str, port: int) -> None:
    """Max batch 32, batch timeout 5 ms, as the issue's baseline measured it."""
    api = PlainAPI(
        runs, name, max_batch_size=32, batch_timeout=0.005, api_path=f"/v1/models/{name}:predict"
    )
    ls.LitServer(api, accelerator="cpu").run(
        port=port, host="127.0.0.1", log_level="warning", generate_client_file=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=["floor", "naive-def", "naive-async", "litserve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument(
        "--models", nargs="+", choices=list(ALL_MODELS), help="what to serve; litserve: one"
    )
    args = parser.parse_args()
    if args.server == "litserve":
        run_litserve(args.runs, args.models[0], args.port)
        return
    apps = {
        "floor": floor_app,
        "naive-def": lambda: naive_def_app(args.runs, args.models),
        "naive-async": lambda: naive_async_app(args.runs, args.models),
    }
    uvicorn.run(apps[args.server](), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

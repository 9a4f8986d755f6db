"""The TorchServe handler for the benchmark: the exported TorchScript model, V1 JSON bodies.

TorchServe batches up to batchSize requests (maxBatchDelay) and calls `handle` once per batch
with one entry per request; each body is {"instances": [...]}, the answer the probabilities.
"""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class InstancesHandler(BaseHandler):
    def initialize(self, context) -> None:
        torch.set_num_threads(1)  # as every other server in the benchmark
        super().initialize(context)  # loads the archive's TorchScript file

    def preprocess(self, data: list[dict]) -> tuple[torch.Tensor, list[int]]:
        batches = []
        for row in data:
            body = row.get("body") or row.get("data")
            if isinstance(body, bytes | bytearray):
                body = json.loads(body)
            batches.append(torch.tensor(body["instances"], dtype=torch.float32))
        return torch.cat(batches), [len(b) for b in batches]

    def inference(self, data: tuple[torch.Tensor, list[int]], *args, **kwargs) -> tuple:
        x, sizes = data
        with torch.inference_mode():
            return self.model(x), sizes

    def postprocess(self, data: tuple) -> list[dict]:
        probabilities, sizes = data
        return [{"predictions": p.tolist()} for p in probabilities.split(sizes)]

"""Export: checkpoints to TorchScript and ONNX, verified, as versions of a model repository.

The repository format and the runtimes live in `artifacts`, which the service imports too;
nothing imports `export` but its own command and the benchmark.
"""

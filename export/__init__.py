"""Export: checkpoints to TorchScript and ONNX, verified, as versions of a model repository.

The service imports `export.manifest` alone (the repository format); nothing else here.
"""

"""The HTTP service: serves the model repository with LitServe (python -m service)."""

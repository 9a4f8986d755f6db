"""The artifact layer: the model repository's format (manifest.py) and the runtimes that
load an artifact (runtimes.py). `export` writes artifacts and `service` serves them; both
import this package, and it imports neither, nor `training`.
"""

"""The classifiers, one module each, with their config dataclasses."""

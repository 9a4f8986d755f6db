"""Load tests (locust) and the benchmark; servers.py starts servers for them and the tests."""

"""The locust users' own options, in one place: the locustfile adds them to locust's parser,
and `python -m load_tests --help` lists them (it passes them on to locust as they are)."""

from artifacts.manifest import default_repository

# SLO defaults, from a 10 s run on the project's 2-core machine, 16 users and the service on
# the same cores: p95 68-76 ms and p99 73-170 ms per endpoint (p95 72, p99 110 overall), at
# ~300 requests/s with locust itself busy; these leave about 2x headroom.
SLO_P95_MS = 150.0
SLO_P99_MS = 300.0


def add_options(parser) -> list:
    """Onto an argparse-like parser (locust's is configargparse's), or a group of one; the
    actions added."""
    add = parser.add_argument
    return [
        add(
            "--repository",
            default=str(default_repository()),
            help="the model repository: what a started service serves, and where the payloads "
            "come from (default: $TENSORGATE_REPOSITORY, else model_repository)",
        ),
        add(
            "--model-weights",
            default="",
            help="relative weight of each model, name=weight,... (default: every model, 1 each)",
        ),
        add(
            "--protocol-weights",
            default="v1=1,v2=1,v2-binary=1,grpc=1",
            help="relative weight of each protocol: v1, v2, v2-binary, grpc (default: %(default)s)",
        ),
        add(
            "--grpc-target",
            default="",
            help="the service's gRPC HOST:PORT (default: --host's host, port 8001)",
        ),
        add(
            "--instances", type=int, default=1, help="instances per request (default: %(default)s)"
        ),
        add("--api-key", default="", help="sent as Authorization: Bearer"),
        add(
            "--slo-failure-ratio",
            type=float,
            default=0.0,
            help="most failures allowed, as a ratio of requests (default: %(default)s)",
        ),
        add(
            "--slo-p95-ms",
            type=float,
            default=SLO_P95_MS,
            help="p95 limit, ms (default: %(default)s)",
        ),
        add(
            "--slo-p99-ms",
            type=float,
            default=SLO_P99_MS,
            help="p99 limit, ms (default: %(default)s)",
        ),
    ]

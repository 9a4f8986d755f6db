"""locust users for every model and protocol (V1 JSON, V2 JSON, V2 binary, gRPC), with SLO
gates.

    locust -f load_tests/locustfile.py --headless -u 16 -r 8 -t 30s --host http://127.0.0.1:8000
    python -m load_tests ...      # the same, with reports and the service started for you

Payloads are rows of each model's held-out split (not constants), read from the model
repository (--repository, default $TENSORGATE_REPOSITORY or model_repository). Every response
is checked: a 200 whose body is not the right shape of valid probabilities is a failure.
Tasks carry two tags, the model and the protocol, so `--tags mlp` or `--tags v2-binary` runs
a subset; the mix is `--model-weights` x `--protocol-weights`. When the run ends, the SLOs
(failure ratio, p95, p99, overall and per endpoint) are checked and a violation exits
non-zero, naming it.
"""

import logging
import time
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import gevent
import grpc
import grpc.experimental.gevent
import numpy as np
from locust import FastHttpUser, events, tag
from tritonclient.grpc import service_pb2_grpc

from load_tests.options import add_options
from load_tests.payloads import (
    PROTOCOLS,
    Case,
    Served,
    build_case,
    check,
    check_grpc,
    served_models,
    weights,
)

grpc.experimental.gevent.init_gevent()  # gRPC's I/O on gevent's loop, as locust's users run

logger = logging.getLogger("tensorgate.locust")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    add_options(parser)


class TensorgateUser(FastHttpUser):
    """Sends the weighted mix of cases; the tasks are made at start-up from the options."""

    tasks: ClassVar[list] = []  # filled by _make_tasks

    def on_start(self) -> None:
        options = self.environment.parsed_options
        key = options.api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        target = options.grpc_target or f"{urlsplit(self.host).hostname}:8001"
        self.grpc = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
        self.turn = 0

    def infer(self, case: Case) -> None:
        body, headers = case.bodies[self.turn % len(case.bodies)]
        self.turn += 1
        if case.protocol == "grpc":
            self.infer_grpc(case, body)
            return
        with self.client.post(
            case.path,
            data=body,
            headers={**self.headers, **headers},
            name=case.name,
            catch_response=True,
        ) as response:
            try:
                problem = check(case, response)
            except (ValueError, KeyError, TypeError) as e:
                problem = f"unreadable body: {e!r}"
            if problem:
                response.failure(problem)
            else:
                response.success()

    def infer_grpc(self, case: Case, request) -> None:
        """One ModelInfer call, reported to locust as HTTP requests are."""
        started, problem, size = time.perf_counter(), None, 0
        try:
            response = self.grpc.ModelInfer(request, metadata=self.metadata, timeout=30)
            size = response.ByteSize()
            problem = check_grpc(case, response)
        except grpc.RpcError as e:
            problem = f"gRPC {e.code().name}: {e.details()}"
        except (ValueError, KeyError, TypeError) as e:
            problem = f"unreadable answer: {e!r}"
        self.environment.events.request.fire(
            request_type="grpc",
            name=case.name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=RuntimeError(problem) if problem else None,
            context={},
        )


@events.init.add_listener
def _make_tasks(environment, **kwargs) -> None:
    options = environment.parsed_options
    if options is None:  # locust used as a library with no options
        return
    repository = Path(options.repository)
    known = served_models(repository)
    models = weights(options.model_weights, known) or dict.fromkeys(known, 1)
    protocols = weights(options.protocol_weights, PROTOCOLS)
    rng = np.random.default_rng(0)
    tasks = []
    for model, model_weight in models.items():
        served = Served(repository, model)
        for protocol, protocol_weight in protocols.items():
            case = build_case(model, protocol, options.instances, rng, served)

            def run(user: TensorgateUser, case: Case = case) -> None:
                user.infer(case)

            run.__name__ = f"{model}_{protocol}"
            tasks += [tag(model, protocol)(run)] * (model_weight * protocol_weight)
    if not tasks:
        raise ValueError("the weights leave no task to run")
    TensorgateUser.tasks = tasks
    # Reading the repository blocked gevent's loop, whose clock then lags: refresh it, or the
    # --run-time timer that locust sets next would measure from the stale time and end early.
    gevent.get_hub().loop.update_now()


def slo_violations(environment) -> list[str]:
    options, stats = environment.parsed_options, environment.stats
    total = stats.total
    if total.num_requests == 0:
        return ["no request was made"]
    found = []
    if total.fail_ratio > options.slo_failure_ratio:
        found.append(f"failure ratio {total.fail_ratio:.4f} > SLO {options.slo_failure_ratio}")
    for entry in [total, *stats.entries.values()]:
        for quantile, limit in ((0.95, options.slo_p95_ms), (0.99, options.slo_p99_ms)):
            measured = entry.get_response_time_percentile(quantile)
            if measured > limit:
                found.append(
                    f"{entry.name}: p{round(quantile * 100)} {measured:.0f} ms > SLO {limit:g} ms"
                )
    return found


@events.quitting.add_listener
def _check_slos(environment, **kwargs) -> None:
    if environment.parsed_options is None:
        return
    violations = slo_violations(environment)
    total = environment.stats.total
    summary = (
        f"{total.num_requests} requests, {total.num_failures} failures, "
        f"p95 {total.get_response_time_percentile(0.95):.0f} ms, "
        f"p99 {total.get_response_time_percentile(0.99):.0f} ms"
    )
    if violations:
        logger.error("SLO violated (%s): %s", summary, "; ".join(violations))
        environment.process_exit_code = 1
    else:
        logger.info("SLOs met: %s", summary)

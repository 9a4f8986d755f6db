"""python -m service: serve the model repository (settings: --help, or TENSORGATE_* env vars)."""

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from .logs import configure
from .settings import Settings, describe, from_command_line

logger = logging.getLogger("tensorgate")


@contextmanager
def metrics_dir() -> Iterator[Path]:
    """prometheus_client's multiprocess mode needs one folder that every process writes to,
    empty at start, set before anything imports prometheus_client. A folder of our own
    making is removed at exit; PROMETHEUS_MULTIPROC_DIR's is kept (it may be a volume)."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="tensorgate-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        yield path
    finally:
        if not configured:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = from_command_line(argv)
    except ValidationError as e:
        print(f"invalid settings:\n{describe(e)}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    with metrics_dir():
        return serve(settings)


def serve(settings: Settings) -> int:
    from artifacts.manifest import ManifestError  # after the metrics folder is set

    from .app import build_server
    from .connections import ConnectionLimits, guarded_protocol
    from .engine import StartupError
    from .host import idle_policy, usable_cores
    from .repository import load_models

    try:
        models = load_models(settings)
    except ManifestError as e:
        logger.error("refusing to start: %s", e)
        return 1
    for m in models:
        logger.info(
            "serving %s version %d with %s (max batch %d, batch timeout %g s)",
            m.name,
            m.version,
            m.backend,
            m.max_batch_size,
            m.batch_timeout,
        )
    logger.info(
        "%d HTTP processes; this process may use %d cores (its CPU affinity and cgroup quota)",
        settings.api_servers,
        usable_cores(),
    )
    if warning := idle_policy().warning():
        logger.warning(warning)
    try:
        server = build_server(settings, models)
    except (RuntimeError, ValueError) as e:  # TENSORGATE_DEVICE=cuda without a GPU; a bad
        # OTEL_TRACES_SAMPLER
        logger.error("refusing to start: %s", e)
        return 1
    try:
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.api_servers,
            log_level=settings.log_level,
            access_log=False,  # the data plane's access log has the model, version, timings
            log_config=None,  # uvicorn's loggers go through the root one, in our format
            http=guarded_protocol(
                ConnectionLimits(settings.max_header_bytes, settings.read_timeout)
            ),
            timeout_keep_alive=settings.keep_alive_timeout,
            generate_client_file=False,
        )
    except StartupError as e:
        logger.error("refusing to start: %s", e)
        return 1
    if server.exit_reason:
        logger.error("stopped: %s", server.exit_reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

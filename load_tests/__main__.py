"""python -m load_tests: a headless locust run with SLO gates, CSV and HTML reports.

Runs against --url, or starts the service on a free loopback port itself (from
--repository) and stops it afterwards. Options it does not know go to locust as they are
(--tags, --model-weights, --protocol-weights, --instances, --api-key, --grpc-target,
--slo-*, ...).
"""

import argparse
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from artifacts.manifest import default_repository

from .servers import running_service

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="the service to load (default: start one)")
    parser.add_argument(
        "--repository",
        type=Path,
        default=default_repository(),
        help="what the started service serves, and where the payloads come from (default: "
        "$TENSORGATE_REPOSITORY, else model_repository)",
    )
    parser.add_argument("--users", type=int, default=16, help="concurrent users (default 16)")
    parser.add_argument("--spawn-rate", type=float, default=8, help="users started per second")
    parser.add_argument("--duration", default="30s", help="run time, e.g. 10s, 2m (default 30s)")
    parser.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="where the CSV and HTML reports go (default reports/)",
    )
    args, locust_args = parser.parse_known_args(argv)

    out = args.reports / time.strftime("loadtest-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = nullcontext(None) if args.url else running_service(args.repository, out)
    with started as service:
        url = args.url or service.url
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "--host",
            url,
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            args.duration,
            "--repository",
            str(args.repository),
            "--csv",
            str(out / "locust"),
            "--html",
            str(out / "report.html"),
            *([] if args.url else ["--grpc-target", service.grpc]),
            *locust_args,
        ]
        print(f"load test: {args.users} users for {args.duration} against {url}", flush=True)
        code = subprocess.call(command)
    print(f"reports: {out}/ (locust_stats.csv, report.html); exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())

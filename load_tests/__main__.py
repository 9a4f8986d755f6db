"""python -m load_tests: a headless locust run with SLO gates, CSV and HTML reports.

Runs against --url, or starts the service on a free loopback port itself (from
--repository) and stops it afterwards. The users' options below go to locust, and so do the
options it does not know, as they are (--tags, and locust's own).
"""

import argparse
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from .options import add_options
from .servers import running_service

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="the service to load (default: start one)")
    parser.add_argument("--users", type=int, default=16, help="concurrent users (default 16)")
    parser.add_argument("--spawn-rate", type=float, default=8, help="users started per second")
    parser.add_argument("--duration", default="30s", help="run time, e.g. 10s, 2m (default 30s)")
    parser.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="where the CSV and HTML reports go (default reports/)",
    )
    users = add_options(parser.add_argument_group("the users' options, passed on to locust"))
    args, locust_args = parser.parse_known_args(argv)
    repository = Path(args.repository)

    out = args.reports / time.strftime("loadtest-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = nullcontext(None) if args.url else running_service(repository, out)
    with started as service:
        url = args.url or service.url
        if service is not None and not args.grpc_target:
            args.grpc_target = service.grpc
        for action in users:
            locust_args += [action.option_strings[0], str(getattr(args, action.dest))]
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
            "--csv",
            str(out / "locust"),
            "--html",
            str(out / "report.html"),
            *locust_args,
        ]
        print(f"load test: {args.users} users for {args.duration} against {url}", flush=True)
        code = subprocess.call(command)
    print(f"reports: {out}/ (locust_stats.csv, report.html); exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())

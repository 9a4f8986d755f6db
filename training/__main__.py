"""python -m training --model {mlp,resnet,transformer,all}: train and write runs/<model>/."""

import argparse
import sys
import tempfile
from pathlib import Path

from .registry import ALL_MODELS, REGISTRY
from .run import train_and_save

RUNS = Path("runs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the registered classifiers on their bundled data sets.",
    )
    parser.add_argument(
        "--model",
        choices=[*ALL_MODELS, "all"],
        default="all",
        help="which model; all: the served ones, not the benchmark-only resnet-cifar",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="runs folder (default: runs; for --dry-run, a new temporary folder, so that a "
        "smoke test never replaces a real run's checkpoint)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CUDA when a GPU is present, else the CPU (default: auto)",
    )
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument(
        "--dry-run", action="store_true", help="a few batches of two epochs: a smoke test"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="tensorgate-dry-run-")) if args.dry_run else RUNS

    names = list(REGISTRY) if args.model == "all" else [args.model]
    failed = []
    for name in names:
        r = train_and_save(name, args.out, args.device, args.dry_run, args.seed)
        bar = ALL_MODELS[name].accuracy_bar
        verdict = "ok" if r.test_accuracy >= bar else "BELOW BAR"
        print(
            f"{name}: test accuracy {r.test_accuracy:.4f} (bar {bar}) {verdict}; "
            f"best epoch {r.best_epoch}/{len(r.history)}; {r.wall_time_s:.1f} s on {r.device}; "
            f"wrote {args.out / name}/"
        )
        if r.test_accuracy < bar and not args.dry_run:
            failed.append(name)
    if failed:
        print(f"below the accuracy bar: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

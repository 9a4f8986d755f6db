"""python -m export --model {mlp,resnet,transformer,all}: checkpoints -> model repository."""

import argparse
import sys
from pathlib import Path

from artifacts.manifest import BACKENDS, Serving, read_manifest
from training.checkpoint import CHECKPOINT_NAME
from training.registry import ALL_MODELS, REGISTRY

from .pipeline import export_model
from .verify import ParityError

DEFAULTS = Serving()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export trained checkpoints to TorchScript and ONNX, verify them against "
        "eager PyTorch, and publish each as a new version in the model repository.",
    )
    parser.add_argument("--model", choices=[*ALL_MODELS, "all"], default="all")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="training runs folder")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULTS.backend,
        help=f"the backend the service uses for this version (default: {DEFAULTS.backend})",
    )  # fmt: skip
    parser.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size)
    parser.add_argument(
        "--batch-timeout", type=float, default=DEFAULTS.batch_timeout, help="seconds"
    )
    args = parser.parse_args(argv)
    serving = Serving(
        backend=args.backend,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )

    names = list(REGISTRY) if args.model == "all" else [args.model]
    missing = [n for n in names if not (args.runs / n / CHECKPOINT_NAME).is_file()]
    if missing:
        print(
            f"no checkpoint for {', '.join(missing)} under {args.runs}/; train first: "
            f"python -m training --model {missing[0] if len(missing) == 1 else 'all'} "
            "(make export trains what is missing)",
            file=sys.stderr,
        )
        return 1
    for name in names:
        try:
            version_dir = export_model(args.runs / name / CHECKPOINT_NAME, args.repository, serving)
        except ParityError as e:
            print(f"export failed, no version written: {e}", file=sys.stderr)
            return 1
        m = read_manifest(version_dir)
        figures = ", ".join(
            f"{b} diff {p.max_abs_diff:.1e} acc {m.metrics[b]['accuracy']:.4f}"
            for b, p in m.parity.items()
        )
        print(f"{name}: wrote {version_dir}/ (eager acc {m.metrics['eager']['accuracy']:.4f}; "
              f"{figures})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

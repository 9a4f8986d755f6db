"""python -m export --model {mlp,resnet,transformer,all}: checkpoints -> model repository.
python -m export import FILE --name NAME: a model file made elsewhere -> model repository."""

import argparse
import sys
from pathlib import Path

from artifacts.manifest import BACKENDS, Serving, default_repository, read_manifest
from training.checkpoint import CHECKPOINT_NAME
from training.registry import ALL_MODELS, REGISTRY

from .importer import ImportFailed, import_model, parse_tensor
from .pipeline import export_model, not_publishable
from .verify import ParityError

DEFAULTS = Serving()
REPOSITORY_HELP = "the model repository (default: $TENSORGATE_REPOSITORY, else model_repository)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        return import_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export trained checkpoints to TorchScript and ONNX, verify them against "
        "eager PyTorch, and publish each as a new version in the model repository. "
        "To serve a model file made elsewhere: python -m export import --help",
    )
    parser.add_argument("--model", choices=[*ALL_MODELS, "all"], default="all")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="training runs folder")
    parser.add_argument(
        "--repository", type=Path, default=default_repository(), help=REPOSITORY_HELP
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULTS.backend,
        help=f"the backend the service uses for this version (default: {DEFAULTS.backend})",
    )  # fmt: skip
    parser.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size)
    parser.add_argument(
        "--batch-timeout", type=float, default=DEFAULTS.batch_timeout, help="seconds"
    )
    parser.add_argument(
        "--allow-below-bar",
        action="store_true",
        help="publish a checkpoint from a dry run or below its model's accuracy bar",
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
    refused = [not_publishable(args.runs / n / CHECKPOINT_NAME) for n in names]
    refused = [why for why in refused if why is not None]
    if refused and not args.allow_below_bar:
        for why in refused:
            print(f"not exported: {why}", file=sys.stderr)
        print("train it fully (python -m training), or give --allow-below-bar", file=sys.stderr)
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


def import_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export import",
        description="Check an ONNX or TorchScript file made elsewhere, run it on inputs of its "
        "signature, and publish it as a new version in the model repository.",
    )
    parser.add_argument("file", type=Path, help="a .onnx file, or a TorchScript .pt file")
    parser.add_argument("--name", required=True, help="the model's name in the repository")
    parser.add_argument(
        "--repository", type=Path, default=default_repository(), help=REPOSITORY_HELP
    )
    tensor = "NAME:DATATYPE:D1,D2,... batch first, -1 for a dynamic axis (TorchScript only)"
    parser.add_argument("--input", action="append", default=[], metavar="TENSOR", help=tensor)
    parser.add_argument("--output", action="append", default=[], metavar="TENSOR", help=tensor)
    parser.add_argument(
        "--labels", type=Path, help="a file of labels, one per line, for the first output's columns"
    )
    parser.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size)
    parser.add_argument(
        "--batch-timeout", type=float, default=DEFAULTS.batch_timeout, help="seconds"
    )
    parser.add_argument(
        "--range", default="0,1", metavar="LOW,HIGH",
        help="the smoke run's random input values (default: 0,1)",
    )  # fmt: skip
    parser.add_argument("--sample", type=Path, help="inputs.npz: an array per input name")
    parser.add_argument("--expected", type=Path, help="outputs.npz: the sample's outputs")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="for --expected")
    args = parser.parse_args(argv)
    try:
        low, high = (float(v) for v in args.range.split(","))
        labels = args.labels.read_text().split() if args.labels else None
        version_dir = import_model(
            args.file,
            args.name,
            args.repository,
            inputs=[parse_tensor(t) for t in args.input] or None,
            outputs=[parse_tensor(t) for t in args.output] or None,
            labels=labels,
            max_batch_size=args.max_batch_size,
            batch_timeout=args.batch_timeout,
            value_range=(low, high),
            sample=args.sample,
            expected=args.expected,
            tolerance=args.tolerance,
        )
    except (ImportFailed, ValueError, OSError) as e:
        print(f"import failed, no version written: {e}", file=sys.stderr)
        return 1
    m = read_manifest(version_dir)
    signature = "; ".join(
        f"{kind} {t.name} {t.datatype} {t.shape}"
        for kind, tensors in (("in", m.inputs), ("out", m.outputs))
        for t in tensors
    )
    print(f"{args.name}: wrote {version_dir}/ ({m.serving.backend}; {signature})")
    if not m.batched:
        print("  no dynamic batch axis: served one instance per request (max batch size 1)")
    checked = f"; sample within {args.tolerance:g}" if m.parity else ""
    print(f"  smoke run at batch sizes {m.smoke.batch_sizes}{checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

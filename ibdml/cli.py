"""The `ibdml` command.

    ibdml run PARAMS [-p key=value ...] [--out DIR] [--only NOTEBOOK ...] [--force]
    ibdml train PARAMS [-p key=value ...] [--out DIR] [--restart]
    ibdml evaluate RUN_DIR
    ibdml claims PARAMS [-p key=value ...] [--out DIR] [--seeds S ...]   (notebooks/05_claims)
    ibdml check-data DATASET ROOT [--no-verify]   (exit 0: ready; 1: problems found)
    ibdml params            (the parameter table)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ibdml.config import DATASETS, ParamError, load_params, params_markdown, parse_override

# The benchmark layouts check-data knows (data/benchmarks.py): every dataset but the embedded one.
BENCHMARKS = tuple(d for d in DATASETS if d != "glyphs")


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message already says what to do: printed, no traceback. Imported only when
    an error is met, so that `ibdml --help` and `ibdml params` never import torch."""
    from ibdml.backbone import WeightsError
    from ibdml.data.folder import DatasetError
    from ibdml.pipeline import PipelineError
    from ibdml.steps.rundir import RunFolderError
    from ibdml.trainer import TrainingDiverged

    return (ParamError, RunFolderError, DatasetError, WeightsError, TrainingDiverged,
            FileNotFoundError, PipelineError)


def default_run_dir(params_file: str) -> Path:
    return Path("outputs") / Path(params_file).stem


def cmd_run(args: argparse.Namespace) -> None:
    from ibdml.pipeline import run_pipeline, stream_notebook_output

    overrides = dict(parse_override(o) for o in args.override)
    out = Path(args.out) if args.out else default_run_dir(args.params)
    stream_notebook_output()
    run_pipeline(args.params, out, overrides, only=args.only, force=args.force)


def cmd_claims(args: argparse.Namespace) -> None:
    from ibdml.pipeline import run_claims_notebook, stream_notebook_output

    overrides = dict(parse_override(o) for o in args.override)
    stream_notebook_output()
    path = run_claims_notebook(args.params, Path(args.out), args.seeds, overrides)
    print(f"wrote {path}")


def cmd_train(args: argparse.Namespace) -> None:
    from ibdml.steps.train import train

    p = load_params(args.params, args.override)
    out = Path(args.out) if args.out else default_run_dir(args.params)
    summary = train(p, out, resume=not args.restart)
    print(f"trained {summary['epochs']} epochs into {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ibdml.steps.evaluate import evaluate_run

    result = evaluate_run(Path(args.run_dir))
    shown = {k: result[k] for k in ("recall_at_k", "map_at_r", "nmi", "protocol", "epoch")}
    if "baselines" in result:
        shown["baselines"] = result["baselines"]
    print(json.dumps(shown, indent=2))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")


def cmd_check_data(args: argparse.Namespace) -> int:
    from ibdml.data.benchmarks import check_benchmark

    report = check_benchmark(args.dataset, Path(args.root), verify_images=not args.no_verify)
    print(report.text())
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ibdml", description="Intra-Batch Deep Metric Learning")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute the notebook pipeline (train, evaluate, ...) "
                       "into a run folder; resumes what is done")
    r.add_argument("params", help="parameters YAML file, e.g. params/glyphs.yaml")
    r.add_argument("-p", dest="override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable), e.g. -p epochs=3")
    r.add_argument("--out", help="run folder (default outputs/<params file name>)")
    r.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                   help="run only these steps, e.g. --only 02_evaluate")
    r.add_argument("--force", action="store_true", help="redo steps that are done")
    r.set_defaults(func=cmd_run)
    cl = sub.add_parser("claims", help="the paper's three claims over several seeds: CE-only "
                        "and MPN runs on the same budget (notebooks/05_claims)")
    cl.add_argument("params", help="parameters YAML file of both variants, e.g. params/glyphs.yaml")
    cl.add_argument("-p", dest="override", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter of every run (repeatable)")
    cl.add_argument("--out", default="outputs/claims", help="study folder (default "
                    "outputs/claims): one run folder per variant and seed")
    cl.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S",
                    help="seeds (default 0 1 2)")
    cl.set_defaults(func=cmd_claims)
    t = sub.add_parser("train", help="train a run from a parameters file")
    t.add_argument("params", help="parameters YAML file, e.g. params/glyphs.yaml")
    t.add_argument("-p", dest="override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable), e.g. -p epochs=3")
    t.add_argument("--out", help="run folder (default outputs/<params file name>)")
    t.add_argument("--restart", action="store_true",
                   help="ignore an existing checkpoint in the run folder and train from scratch")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="evaluate a trained run; writes metrics.json")
    e.add_argument("run_dir")
    e.set_defaults(func=cmd_evaluate)
    c = sub.add_parser("check-data", help="check a benchmark copy against its official layout "
                       "and counts; exit 1 when anything is wrong")
    c.add_argument("dataset", choices=BENCHMARKS, help="which benchmark layout to expect")
    c.add_argument("root", help="the dataset folder, e.g. ~/data/CUB_200_2011")
    c.add_argument("--no-verify", action="store_true",
                   help="do not open every image (faster; missing files are still found)")
    c.set_defaults(func=cmd_check_data)
    sub.add_parser("params", help="print the parameter table").set_defaults(
        func=lambda a: print(params_markdown()))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)  # commands return None (success) or an exit code
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"ibdml: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ibdml: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())

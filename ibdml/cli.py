"""The `ibdml` command.

    ibdml run PARAMS [-p key=value ...] [--out DIR] [--only NOTEBOOK ...] [--force]
    ibdml train PARAMS [-p key=value ...] [--out DIR] [--restart] [--nproc G]
    ibdml evaluate RUN_DIR
    ibdml claims PARAMS [-p key=value ...] [--out DIR] [--seeds S ...] [--address ADDR]
                                                                 (notebooks/05_claims)
    ibdml attention-study PARAMS [-p key=value ...] [--out DIR] [--seeds S ...] [--address ADDR]
                                                                 (notebooks/07_attention_study)
    ibdml sweep PARAMS --space SPACE.yaml --trials N --out DIR [-p key=value ...]
                [--address ADDR] [--cpus-per-trial C] [--gpus-per-trial G] [--scheduler asha|none]
    ibdml check-data DATASET ROOT [--no-verify]   (exit 0: ready; 1: problems found)
    ibdml params            (the parameter table)
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import re
import sys
from pathlib import Path

from ibdml.config import (DATASETS, ParamError, Params, load_params, params_markdown,
                          parse_override)

# The benchmark layouts check-data knows (data/benchmarks.py): every dataset but the embedded one.
BENCHMARKS = tuple(d for d in DATASETS if d != "glyphs")


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message already says what to do: printed, no traceback. Imported only when
    an error is met, so that `ibdml --help` and `ibdml params` never import torch."""
    from ibdml.backbone import WeightsError
    from ibdml.cluster import ClusterError
    from ibdml.distributed import WorkerFailed
    from ibdml.data.folder import DatasetError
    from ibdml.data.glyph_classes import GlyphsError
    from ibdml.pipeline import PipelineError
    from ibdml.steps.rundir import RunFolderError
    from ibdml.steps.sweep import SweepError
    from ibdml.trainer import TrainingDiverged

    return (ParamError, RunFolderError, DatasetError, GlyphsError, WeightsError,
            TrainingDiverged, FileNotFoundError, PipelineError, ClusterError, SweepError,
            WorkerFailed)  # a training process's error; its traceback was logged by the launcher


def default_run_dir(params_file: str) -> Path:
    return Path("outputs") / Path(params_file).stem


def check_inputs(p: Params) -> None:
    """Refuse, before a run folder is written, inputs that cannot run (docs/errors.md)."""
    from ibdml.data.check import check_run_inputs

    check_run_inputs(p)


def cmd_run(args: argparse.Namespace) -> None:
    overrides = dict(parse_override(o) for o in args.override)
    check_inputs(load_params(args.params, overrides))  # before any notebook starts
    from ibdml.pipeline import run_pipeline, stream_notebook_output

    out = Path(args.out) if args.out else default_run_dir(args.params)
    stream_notebook_output()
    run_pipeline(args.params, out, overrides, only=args.only, force=args.force)


def cmd_study(args: argparse.Namespace) -> None:
    """`ibdml claims` and `ibdml attention-study`: a study notebook over several seeds."""
    overrides = dict(parse_override(o) for o in args.override)
    check_inputs(load_params(args.params, overrides))
    from ibdml.pipeline import run_study_notebook, stream_notebook_output

    if args.address:
        from ibdml.cluster import check_reachable

        check_reachable(args.address)  # before the notebook starts
    stream_notebook_output()
    path = run_study_notebook(args.command, args.params, Path(args.out), args.seeds, overrides,
                              address=args.address, settings=getattr(args, "settings", None))
    print(f"wrote {path}")


def cmd_sweep(args: argparse.Namespace) -> None:
    overrides = dict(parse_override(o) for o in args.override)
    load_params(args.params, overrides)  # a bad value is quick: before Ray or torch
    from ibdml.steps.sweep import run_sweep

    run_sweep(args.params, args.space, args.trials, args.out, overrides=overrides,
              address=args.address, cpus_per_trial=args.cpus_per_trial,
              gpus_per_trial=args.gpus_per_trial, scheduler=args.scheduler)


def cmd_train(args: argparse.Namespace) -> None:
    nproc = [] if args.nproc is None else [f"nproc={args.nproc}"]  # --nproc G = -p nproc=G
    p = load_params(args.params, args.override + nproc)  # before torch: a bad value is quick
    from ibdml.distributed import job_world
    from ibdml.steps.train import train  # checks the data and weights before writing anything

    out = Path(args.out) if args.out else default_run_dir(args.params)
    summary = train(p, out, resume=not args.restart)  # WorkerFailed: one line, as user_errors
    world = job_world()  # under torchrun every rank runs this command: rank 0 reports
    if world is None or world.is_main:
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
    _study_parser(sub, "claims", "the paper's three claims and the MPN ablation over several "
                  "seeds: CE-only, MPN, MPN with uniform and with self attention, on the same "
                  "budget (notebooks/05_claims)", [0, 1, 2, 3, 4])
    _study_parser(sub, "attention-study", "when does attention become selective? settings of "
                  "epochs, MPN lr, logit scale, null key and batch shape, read on validation "
                  "classes (notebooks/07_attention_study)", [0, 1])
    _sweep_parser(sub)
    _train_parser(sub)
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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return int(text)


def _study_parser(sub: argparse._SubParsersAction, command: str, help: str,
                  seeds: list[int]) -> None:
    cl = sub.add_parser(command, help=help)
    cl.add_argument("params", help="parameters YAML file of every run, e.g. params/glyphs.yaml")
    cl.add_argument("-p", dest="override", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter of every run (repeatable)")
    out = "outputs/" + command.replace("-", "_")
    cl.add_argument("--out", default=out, help=f"study folder (default {out}): one run folder "
                    "per variant and seed")
    cl.add_argument("--seeds", nargs="+", type=int, default=seeds, metavar="S",
                    help=f"seeds (default {' '.join(map(str, seeds))})")
    cl.add_argument("--address", metavar="ADDR", help="join the Ray cluster at ADDR "
                    "(host:port of `ray start --head`); default: a local Ray on this machine")
    if command == "attention-study":
        from ibdml.attention_study import SETTINGS

        cl.add_argument("--settings", nargs="+", choices=list(SETTINGS), metavar="NAME",
                        help=f"run only these settings ({', '.join(SETTINGS)}; default all; "
                        "default always runs)")
    cl.set_defaults(func=cmd_study)


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    """`ibdml sweep`: a random search on Ray Tune (steps/sweep.py, docs/scale-out.md)."""
    sw = sub.add_parser("sweep", help="random search on Ray Tune, selected on a validation "
                        "split; each trial is a run folder (docs/scale-out.md)")
    sw.add_argument("params", help="parameters YAML file every trial starts from")
    sw.add_argument("--space", required=True, help="search space YAML, e.g. "
                    "params/search/glyphs.yaml")
    sw.add_argument("--trials", required=True, type=_positive, metavar="N",
                    help="trials to sample")
    sw.add_argument("--out", required=True, help="search folder: trials/, search.json, best.yaml")
    sw.add_argument("-p", dest="override", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter of every trial (repeatable)")
    sw.add_argument("--address", metavar="ADDR", help="join the Ray cluster at ADDR (host:port "
                    "of `ray start --head`); default: a local Ray on this machine")
    sw.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                    help="CPUs each trial asks for (default 1)")
    sw.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                    help="GPUs each trial asks for (default 0)")
    sw.add_argument("--scheduler", choices=("asha", "none"), default="asha",
                    help="asha: stop trials that trail on validation MAP@R (default); none: "
                    "run every trial to the end")
    sw.set_defaults(func=cmd_sweep)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """`ibdml train`; --nproc G trains one run on G processes (steps/train.py)."""
    t = sub.add_parser("train", help="train a run from a parameters file")
    t.add_argument("params", help="parameters YAML file, e.g. params/glyphs.yaml")
    t.add_argument("-p", dest="override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable), e.g. -p epochs=3")
    t.add_argument("--out", help="run folder (default outputs/<params file name>)")
    t.add_argument("--restart", action="store_true",
                   help="ignore an existing checkpoint in the run folder and train from scratch")
    t.add_argument("--nproc", type=int, metavar="G",
                   help="train on G processes (devices) with torch.distributed, each on whole "
                   "batches (same as -p nproc=G); under torchrun the job decides")
    t.set_defaults(func=cmd_train)


def one_line(e: BaseException) -> str:
    """An error's message on one line. An error raised in a DataLoader worker comes back with
    the worker's traceback in its message (torch re-raises it so): only its last line is kept."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def run_folder(args: argparse.Namespace | None) -> Path | None:
    """The folder the command writes (None: it writes nothing)."""
    if args is None:
        return None
    if getattr(args, "run_dir", None):
        return Path(args.run_dir)
    if getattr(args, "out", None):
        return Path(args.out)
    return default_run_dir(args.params) if args.command in ("run", "train") else None


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder`, in it, or one of the folders above it (made on the way)."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents or path in folder.parents


def os_problem(e: OSError, folder: Path | None) -> str | None:
    """A full disk or a folder that cannot be written, in words; None for other OS errors."""
    outside = e.filename and not (folder and _inside(Path(e.filename), folder))
    into = f" {e.filename}" if outside else f" into {folder}" if folder else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device while writing{into} ({e.strerror}); what was "
                "written before is kept (every write is atomic): free space and run the same "
                "command again to resume, or use another --out on a disk with room")
    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    if folder and (not e.filename or _inside(Path(e.filename), folder)):
        return (f"cannot write into {folder} ({e.strerror}: {e.filename or folder}); nothing "
                "was written there: use another --out, a folder you may write to")
    return f"cannot open {e.filename} ({e.strerror}); check its permissions"


def non_finite_embeddings(e: ValueError, folder: Path | None) -> str | None:
    """The embedding validator's refusal of NaN or inf rows (embeddings.py), in words; None for
    any other ValueError, which is a bug and keeps its traceback."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_globals.get("__name__") != "ibdml.embeddings" \
            or "NaN or inf" not in str(e):
        return None
    rows = re.search(r"\d+ of \d+ rows", str(e))
    return (f"the embeddings of run {folder} hold NaN or inf ({rows[0] if rows else one_line(e)}"
            "): the model has diverged, or an image is blank; train again in a new run folder "
            "with a lower lr (-p lr=...), and check the data (`ibdml check-data DATASET ROOT` "
            "for a benchmark copy)")


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and the exceptions it was raised from or while handling, innermost last."""
    found = [e]
    while (e := e.__cause__ or e.__context__) is not None and e not in found:
        found.append(e)
    return found


def explain(e: Exception, folder: Path | None) -> str | None:
    """The one-line message of an error the user can fix (docs/errors.md); None for a bug,
    which keeps its traceback."""
    if isinstance(e, ParamError):  # first: a bad parameter never imports torch
        return one_line(e)
    from ibdml.data.check import BenchmarkError

    if isinstance(e, BenchmarkError):
        return e.summary()
    for cause in _chain(e):  # torch.save meeting a full disk raises a RuntimeError from it
        if isinstance(cause, OSError) and (problem := os_problem(cause, folder)):
            return problem
    if isinstance(e, user_errors()):
        return one_line(e)
    return non_finite_embeddings(e, folder) if isinstance(e, ValueError) else None


def main(argv: list[str] | None = None) -> int:
    """Run the command; a bad input is one line `ibdml: error: ...` and exit code 2, Ctrl-C one
    line and 130 (docs/errors.md). Anything else is a bug and shows its traceback."""
    args = None
    try:
        args = parser().parse_args(argv)
        return args.func(args) or 0  # commands return None (success) or an exit code
    except KeyboardInterrupt:
        code, message = 130, "ibdml: interrupted; what was written is kept: run the same " \
                             "command again to resume"
    except Exception as e:
        code, message = 2, explain(e, run_folder(args))
        if message is None:
            raise
        message = f"ibdml: error: {message}"
    # The failed step's objects are gone with the exception: collected now, a progress bar it
    # left open clears its line, and the message starts a line of its own.
    gc.collect()
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The search step: a random search on Ray Tune, selected on validation (docs/scale-out.md).

    <out>/trials/<trial id>/   one ordinary run folder per trial (select_on: val)
    <out>/ray/                 Ray Tune's own state, from which the same command resumes
    <out>/search.json          every trial: its sampled values, validation metrics per evaluated
                               epoch, status; the chosen trial and its one test evaluation
    <out>/best.yaml            the chosen trial's full parameters

Every trial trains with a class-disjoint validation split and `select_on: val`, so it never
evaluates the test split (docs/protocol.md). After every evaluated epoch it reports validation
MAP@R and R@1, and ASHA (Li et al. 2020) stops the trials that trail their rung. A trial's score
is its validation MAP@R at the epoch the run selected (best validation R@1: the weights its
best.pt holds); the best finished trial is chosen, and only its test split is evaluated.
Run again, the same command resumes the search where it stopped: finished, stopped and failed
trials stay as they are; interrupted trials continue from their run folders' checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from ibdml.cluster import check_reachable, ray_session
from ibdml.config import ParamError, load_params, make_params
from ibdml.data.check import check_run_inputs
from ibdml.search_space import Space, load_space
from ibdml.steps.evaluate import evaluate_run
from ibdml.steps.rundir import read_json, run_lock, write_json, write_text
from ibdml.steps.train import train

METRIC = "val_map_at_r"


class SweepError(RuntimeError):
    """A search that cannot run as asked; the message says what to change."""


def run_sweep(params_file: str | Path, space_file: str | Path, trials: int, out: str | Path, *,
              overrides: dict[str, Any] | None = None, address: str | None = None,
              cpus_per_trial: float = 1, gpus_per_trial: float = 0, scheduler: str = "asha",
              log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the search into `out`; returns search.json's content."""
    out = Path(out).resolve()  # Ray's storage and the trials need absolute paths
    space = load_space(space_file)
    base = _base_params(params_file, overrides or {}, space)
    request = {"params_file": str(params_file), "overrides": overrides or {},
               "space": space.as_dict(), "trials_requested": trials, "scheduler": scheduler,
               "metric": "val map_at_r"}
    check_run_inputs(make_params(base), progress=False)  # the data, once, before any trial
    if address not in (None, "auto"):
        check_reachable(address)  # before anything is written
    with run_lock(out):
        _check_same_search(out, request)
        write_json(out / "search.json", {**request, "trials": [], "chosen": None})
        start = time.time()
        with ray_session(address):
            grid = _tuner(out, base, space, trials, scheduler, cpus_per_trial,
                          gpus_per_trial).fit()
            # {trial id (its Ray folder's name): (sampled values, error or None)}
            outcomes = {Path(r.path).name: (r.config, _error(r)) for r in grid}
        seconds = round(time.time() - start, 1)  # this call's search, not a resumed one's
        return _summarise(out, {**request, "seconds": seconds}, outcomes, log)


def _base_params(params_file: str | Path, overrides: dict, space: Space) -> dict[str, Any]:
    """Every trial's parameters but the sampled ones, validated, with select_on: val. The
    space's fixed values override the parameters file, and -p overrides both; a parameter the
    space samples cannot also be given with -p."""
    both = sorted(set(overrides) & set(space.sampled))
    if both:
        raise ParamError(f"{', '.join(both)} {'is' if len(both) == 1 else 'are'} sampled by the "
                         "search space; drop the -p, or fix the value in the space file instead")
    values = asdict(load_params(params_file, {**space.fixed, **overrides}))
    if values["val_fraction"] == 0:
        raise ParamError("a search selects on a validation split: set val_fraction > 0 (e.g. "
                         "-p val_fraction=0.2, or in the space file); the test split is "
                         "evaluated once, for the chosen trial")
    values["select_on"] = "val"
    values["data_root"] = str(Path(values["data_root"]).expanduser().resolve())  # any cwd
    return values


def _check_same_search(out: Path, request: dict) -> None:
    """A folder holds one search: the same command resumes it, any other is refused."""
    if not (out / "search.json").is_file():
        return
    before = read_json(out / "search.json")
    changed = [k for k in request if before.get(k) != request[k]]
    if changed:
        raise SweepError(f"{out} holds a search with other settings ({', '.join(changed)} "
                         "differ); run the same command to resume it, or give another --out")


def _tuner(out: Path, base: dict, space: Space, trials: int, scheduler: str, cpus: float,
           gpus: float):
    """A new Ray Tune Tuner, or the one stored in <out>/ray when the search was started."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, out=str(out)),
                                    {"cpu": cpus, "gpu": gpus})
    if tune.Tuner.can_restore(str(out / "ray" / "tune")):
        return tune.Tuner.restore(str(out / "ray" / "tune"), trainable, resume_unfinished=True,
                                  resume_errored=False)
    epochs = base["epochs"]
    chosen = (ASHAScheduler(time_attr="epoch", max_t=epochs, reduction_factor=2,
                            grace_period=min(max(1, base["eval_every"]), epochs))
              if scheduler == "asha" else FIFOScheduler())
    sampled = {name: _to_tune(kind, args) for name, (kind, args) in space.sampled.items()}
    return tune.Tuner(
        trainable, param_space=sampled,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=trials,
                                    scheduler=chosen, reuse_actors=False,
                                    search_alg=BasicVariantGenerator(random_state=base["seed"]),
                                    trial_dirname_creator=_trial_id,
                                    trial_name_creator=_trial_id),
        run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=1))


def _to_tune(kind: str, args: list):
    from ray import tune

    if kind == "choice":
        return tune.choice(args)
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)  # Ray's upper end is excluded; ours is not
    return tune.loguniform(*args) if kind == "loguniform" else tune.uniform(*args)


def _trial_id(trial) -> str:
    return trial.trial_id


def _trial(config: dict, base: dict, out: str) -> None:
    """One trial: an ordinary run folder, trained (or resumed) with the sampled values; reports
    validation metrics after every evaluated epoch."""
    import torch
    from ray import tune

    context = tune.get_context()
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # the trial's share of the machine, not all of it
    p = make_params({**base, **config})
    run_dir = Path(out) / "trials" / context.get_trial_id()
    train(p, run_dir, progress=False, on_epoch=_report)


def _report(row: dict) -> None:
    from ray import tune

    if "val" in row:
        tune.report({"epoch": row["epoch"], METRIC: row["val"]["map_at_r"],
                     "val_r1": row["val"]["recall_at_k"]["1"]})


def _error(result) -> str | None:
    """A failed trial's error, on one line (its last); None when the trial did not fail."""
    if result.error is None:
        return None
    cause = getattr(result.error, "cause", None) or result.error
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[-1]}"


def _summarise(out: Path, request: dict, outcomes: dict[str, tuple[dict, str | None]],
               log: Callable[[str], None]) -> dict:
    trials = [_trial_summary(out, trial_id, *outcome)
              for trial_id, outcome in sorted(outcomes.items())]
    chosen = _choose(trials)
    result = {**request, "trials": trials, "chosen": None}
    if chosen is None:
        write_json(out / "search.json", result)
        raise SweepError(f"no trial finished (see {out / 'search.json'}); fix what the failed "
                         "trials report, or widen the space, and run again in a new --out")
    run = out / chosen["run_dir"]
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() \
        else evaluate_run(run, progress=False)  # the test split, once, for this trial only
    chosen["test"] = {k: metrics[k] for k in ("recall_at_k", "map_at_r", "nmi", "protocol")}
    result["chosen"] = chosen
    write_text(out / "best.yaml", (run / "params.yaml").read_text(encoding="utf-8"))
    write_json(out / "search.json", result)
    log(f"chosen trial {chosen['trial']}: val MAP@R {chosen['val']['map_at_r']:.4f}, test R@1 "
        f"{metrics['recall_at_k']['1']:.4f}; wrote {out / 'search.json'} and {out / 'best.yaml'}")
    return result


def _trial_summary(out: Path, trial_id: str, values: dict, error: str | None) -> dict:
    """A trial as search.json lists it, read from its run folder."""
    run = out / "trials" / trial_id
    params = yaml.safe_load((run / "params.yaml").read_text(encoding="utf-8")) \
        if (run / "params.yaml").is_file() else {}
    history = read_json(run / "history.json") if (run / "history.json").is_file() else []
    curve = [{"epoch": r["epoch"], "val": {"recall_at_k": r["val"]["recall_at_k"],
                                            "map_at_r": r["val"]["map_at_r"]}}
             for r in history if "val" in r]
    epochs = history[-1]["epoch"] if history else 0
    status = ("failed" if error else "not run" if not params
              else "finished" if epochs == params["epochs"] else "stopped early")
    selected = _selected(curve)
    return {"trial": trial_id, "run_dir": f"trials/{trial_id}", "values": values,
            "status": status, "error": error, "epochs": epochs, "history": curve,
            "selected_epoch": selected["epoch"] if selected else None,
            "val": selected["val"] if selected else None}


def _selected(curve: list[dict]) -> dict | None:
    """The row whose weights best.pt holds: the first with the best validation R@1
    (steps/train.py keeps a checkpoint only when R@1 improves)."""
    best = None
    for row in curve:
        if best is None or row["val"]["recall_at_k"]["1"] > best["val"]["recall_at_k"]["1"]:
            best = row
    return best


def _choose(trials: list[dict]) -> dict | None:
    """The finished trial with the best validation MAP@R at its selected epoch (None if none)."""
    done = [t for t in trials if t["status"] == "finished" and t["val"] is not None]
    if not done:
        return None
    best = max(done, key=lambda t: t["val"]["map_at_r"])
    return {k: best[k] for k in ("trial", "run_dir", "values", "selected_epoch", "val")}


def read_search(search_dir: str | Path) -> tuple[Path, dict]:
    """(the path of <search_dir>/search.json, its content), for notebooks/06_search; a missing
    file is a FileNotFoundError that says which command writes it."""
    path = Path(search_dir).expanduser().resolve() / "search.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: `ibdml sweep` writes it, e.g. `ibdml sweep params/glyphs.yaml"
            f" --space params/search/glyphs.yaml --trials 12 --out {search_dir}` "
            "(docs/scale-out.md)")
    return path, read_json(path)

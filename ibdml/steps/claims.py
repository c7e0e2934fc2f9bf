"""The claims study (paper claims 1–3 and the MPN ablation; notebooks/05_claims): for every seed,
train runs of each variant of ibdml.claims.VARIANTS on the same budget (same parameters, epochs,
batches and seed; only the model differs) into <study>/<variant>-seed<S>/, evaluate them as the
pipeline does, and summarise them into <study>/claims.json with the statistics of ibdml.claims.
The runs are Ray tasks (ibdml.cluster): in parallel on this machine's cores, or on a cluster with
`address`; each run stays resumable on its own.

    ce            the CE-only baseline: mpn_layers 0, loss_heads backbone (no MPN anywhere)
    mpn           the method: backbone + MPN trained with both losses; MPN at inference and the
                  attention summary run on it
    mpn-uniform   the same MPN with uniform attention (mpn_attention: uniform)
    mpn-self      the same MPN attending only to itself (mpn_attention: self)

`paper_comparison` sets runs of the paper recipes, where they exist, beside the paper's numbers
(ibdml.paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ibdml.cluster import ray_session, run_tasks
from ibdml.claims import ABLATION, METRICS, VARIANTS, budget, claim3, compare, runs_summary
from ibdml.config import Params, load_params
from ibdml.data.check import check_run_inputs
from ibdml.paper import PAPER, comparison_rows
from ibdml.steps.attention import summarise_run
from ibdml.steps.evaluate import evaluate_run, read_outcomes
from ibdml.steps.mpn_inference import evaluate_mpn_inference
from ibdml.steps.rundir import read_json, run_lock, write_json
from ibdml.steps.train import train
from ibdml.uncertainty import paired_bootstrap_difference
from ibdml.verdicts import mean_std


def run_dir_of(study_dir: Path, variant: str, seed: int) -> Path:
    return Path(study_dir) / f"{variant}-seed{seed}"


def run_claims(params_file: str | Path, study_dir: str | Path, seeds: Sequence[int],
               overrides: dict[str, Any] | None = None, *, address: str | None = None,
               cpus_per_run: float = 1, gpus_per_run: float = 0,
               log: Callable[[str], None] = print) -> dict:
    """Train and evaluate every variant for every seed (each resumes or skips what is done) as
    Ray tasks of `cpus_per_run` CPUs and `gpus_per_run` GPUs (a local Ray, or the cluster at
    `address`), then summarise into <study>/claims.json. Returns the summary. Holds the study
    folder's lock throughout, and each task its run folder's (steps/rundir.py): RunLocked when
    another process is writing one of them."""
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, at least one (three for a spread), got {seeds}")
    study_dir = Path(study_dir).resolve()
    jobs = [(load_params(params_file, {**(overrides or {}), **changes, "seed": seed}),
             run_dir_of(study_dir, variant, seed), variant)
            for seed in seeds for variant, (_, changes) in VARIANTS.items()]
    check_run_inputs(jobs[0][0], progress=False)  # the data, once, before the runs start
    with run_lock(study_dir), ray_session(address):
        log(f"{len(jobs)} runs as Ray tasks ({cpus_per_run:g} CPU, {gpus_per_run:g} GPU each)")
        run_tasks(_run_variant, jobs, cpus=cpus_per_run, gpus=gpus_per_run)
        return summarise_claims(study_dir, seeds)


def _run_variant(p: Params, run: Path, variant: str) -> None:
    """Train, evaluate and (the method's variant) refine and summarise one run of the study, under its
    lock, so that no other process writes the run between the steps (a Ray task)."""
    with run_lock(run):
        print(f"[{run.name}] training ({p.epochs} epochs)", flush=True)
        train(p, run, progress=False)
        # the per-query outcomes come with the metrics: a run evaluated without them (an older
        # ibdml) is evaluated again
        if not (run / "outcomes" / "test.npz").is_file():
            evaluate_run(run, progress=False)
        if variant == "mpn":
            if not (run / "outcomes" / "mpn_inference_with.npz").is_file():
                evaluate_mpn_inference(run)
            summarise_run(run)


def summarise_claims(study_dir: str | Path, seeds: Sequence[int]) -> dict:
    """Read the study's runs into claims.json (see the module docstring)."""
    study_dir = Path(study_dir)
    with run_lock(study_dir):
        return _summarise_claims(study_dir, seeds)


def _summarise_claims(study_dir: Path, seeds: Sequence[int]) -> dict:
    runs = {v: [run_dir_of(study_dir, v, s) for s in seeds] for v in VARIANTS}
    metrics = {v: [read_json(r / "metrics.json") for r in rs] for v, rs in runs.items()}
    inference = [read_json(r / "mpn_inference.json") for r in runs["mpn"]]
    one = len(seeds) == 1  # one seed: intervals from a paired bootstrap over the test queries

    def boot(a: Path, b: Path, names: tuple[str, str] = ("test", "test")) -> dict | None:
        if not one:
            return None
        return {m: paired_bootstrap_difference(read_outcomes(a, names[0]),
                                               read_outcomes(b, names[1]), m)
                for m in METRICS if m != "NMI" or metrics["ce"][0].get("nmi") is not None}

    claim1 = compare(metrics["ce"], metrics["mpn"], boot(runs["ce"][0], runs["mpn"][0]))
    claim2 = compare([m["without_mpn"] for m in inference], [m["with_mpn"] for m in inference],
                     boot(runs["mpn"][0], runs["mpn"][0],
                          ("test", "mpn_inference_with")))
    ablation = {key: {"question": question, "a": a, "b": b,
                      "metrics": compare(metrics[a], metrics[b], boot(runs[a][0], runs[b][0]))}
                for key, (a, b, question) in ABLATION.items()}
    attention = [read_json(r / "attention_summary.json") for r in runs["mpn"]]
    baselines = {name: mean_std([m["baselines"][name]["recall_at_k"]["1"] for m in metrics["mpn"]])
                 for name in metrics["mpn"][0].get("baselines", {})}
    result = {
        "seeds": list(seeds), "budget": budget(metrics["mpn"][0]["params"]),
        "variants": runs_summary(metrics, list(seeds)),
        "claim1": {"metrics": claim1, "baselines_r1": baselines, "verdicts": _verdicts(claim1)},
        "claim2": {"metrics": claim2, "feature_space": inference[0]["feature_space"],
                   "verdicts": _verdicts(claim2)},
        "ablation": {k: {**v, "verdicts": _verdicts(v["metrics"])} for k, v in ablation.items()},
        "claim3": claim3(attention),
        # the paper recipes' runs, where they sit beside the study in the same outputs folder
        "paper": paper_comparison(find_paper_runs(study_dir.parent)),
    }
    write_json(study_dir / "claims.json", result)
    return result


def _verdicts(comparison: dict[str, dict]) -> dict[str, str]:
    return {metric: c["verdict"] for metric, c in comparison.items()}


def find_paper_runs(outputs_dir: str | Path) -> dict[str, Path | None]:
    """{recipe: its run folder <outputs>/<recipe> when it holds metrics.json, else None}."""
    runs = {}
    for name in PAPER:
        run = Path(outputs_dir) / name
        runs[name] = run if (run / "metrics.json").is_file() else None
    return runs


def paper_comparison(runs: dict[str, Path | None]) -> dict:
    """Rows {recipe, metric, paper, ours, difference (pp)} for every recipe with a run (its
    metrics.json in percent; MPN at inference from mpn_inference.json), and the recipes with no
    run. Ours is whatever protocol the run used (its metrics.json names it)."""
    rows, missing = [], []
    for name, run in runs.items():
        if run is None:
            missing.append(name)
            continue
        inference = Path(run) / "mpn_inference.json"
        with_mpn = read_json(inference)["with_mpn"] if inference.is_file() else "absent"
        rows += comparison_rows(name, read_json(Path(run) / "metrics.json"), with_mpn)
    return {"rows": rows, "missing": missing}

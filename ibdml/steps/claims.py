"""The claims study (paper claims 1–3; notebooks/05_claims): for every seed, train runs of each
variant on the same budget (same parameters, epochs, batches and seed; only the model differs)
into <study>/<variant>-seed<S>/, evaluate them as the pipeline does, and summarise them into
<study>/claims.json with the statistics of ibdml.claims. The runs are Ray tasks
(ibdml.cluster): in parallel on this machine's cores, or on a cluster with `address`; each run
stays resumable on its own.

    ce    the CE-only baseline: mpn_layers 0, loss_heads backbone (no MPN anywhere)
    mpn   the method: backbone + MPN trained with both losses

`paper_comparison` sets runs of the paper recipes, where they exist, beside the paper's numbers
(ibdml.paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ibdml.cluster import ray_session, run_tasks
from ibdml.claims import (budget, claim3, comparison_rows, mean_std, paired, retrieval_metrics,
                          verdict)
from ibdml.config import Params, load_params
from ibdml.data.check import check_run_inputs
from ibdml.paper import PAPER
from ibdml.steps.attention import summarise_run
from ibdml.steps.evaluate import evaluate_run
from ibdml.steps.mpn_inference import evaluate_mpn_inference
from ibdml.steps.rundir import read_json, run_lock, write_json
from ibdml.steps.train import train

VARIANTS = {"ce": {"mpn_layers": 0, "loss_heads": "backbone"}, "mpn": {}}


def run_dir_of(study_dir: Path, variant: str, seed: int) -> Path:
    return Path(study_dir) / f"{variant}-seed{seed}"


def run_claims(params_file: str | Path, study_dir: str | Path, seeds: Sequence[int],
               overrides: dict[str, Any] | None = None, *, address: str | None = None,
               cpus_per_run: float = 1, gpus_per_run: float = 0,
               log: Callable[[str], None] = print) -> dict:
    """Train and evaluate both variants for every seed (each resumes or skips what is done) as
    Ray tasks of `cpus_per_run` CPUs and `gpus_per_run` GPUs (a local Ray, or the cluster at
    `address`), then summarise into <study>/claims.json. Returns the summary. Holds the study
    folder's lock throughout, and each task its run folder's (steps/rundir.py): RunLocked when
    another process is writing one of them."""
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, at least one (three for a spread), got {seeds}")
    study_dir = Path(study_dir).resolve()
    jobs = [(load_params(params_file, {**(overrides or {}), **changes, "seed": seed}),
             run_dir_of(study_dir, variant, seed), variant)
            for seed in seeds for variant, changes in VARIANTS.items()]
    check_run_inputs(jobs[0][0], progress=False)  # the data, once, before the runs start
    with run_lock(study_dir), ray_session(address):
        log(f"{len(jobs)} runs as Ray tasks ({cpus_per_run:g} CPU, {gpus_per_run:g} GPU each)")
        run_tasks(_run_variant, jobs, cpus=cpus_per_run, gpus=gpus_per_run)
        return summarise_claims(study_dir, seeds)


def _run_variant(p: Params, run: Path, variant: str) -> None:
    """Train, evaluate and (the MPN variant) refine and summarise one run of the study, under its
    lock, so that no other process writes the run between the steps (a Ray task)."""
    with run_lock(run):
        print(f"[{run.name}] training ({p.epochs} epochs)", flush=True)
        train(p, run, progress=False)
        if not (run / "metrics.json").is_file():
            evaluate_run(run, progress=False)
        if variant == "mpn":
            if not (run / "mpn_inference.json").is_file():
                evaluate_mpn_inference(run)
            summarise_run(run)


def summarise_claims(study_dir: str | Path, seeds: Sequence[int]) -> dict:
    """Read the study's runs into claims.json (see the module docstring)."""
    study_dir = Path(study_dir)
    with run_lock(study_dir):
        return _summarise_claims(study_dir, seeds)


def _summarise_claims(study_dir: Path, seeds: Sequence[int]) -> dict:
    ce = [read_json(run_dir_of(study_dir, "ce", s) / "metrics.json") for s in seeds]
    mpn = [read_json(run_dir_of(study_dir, "mpn", s) / "metrics.json") for s in seeds]
    claim1 = paired([retrieval_metrics(m) for m in ce], [retrieval_metrics(m) for m in mpn],
                    ("ce", "mpn"))
    baselines = {name: mean_std([m["baselines"][name]["recall_at_k"]["1"] for m in mpn])
                 for name in mpn[0].get("baselines", {})}
    inference = [read_json(run_dir_of(study_dir, "mpn", s) / "mpn_inference.json") for s in seeds]
    claim2 = paired([retrieval_metrics(m["without_mpn"]) for m in inference],
                     [retrieval_metrics(m["with_mpn"]) for m in inference], ("without", "with"))
    attention = [read_json(run_dir_of(study_dir, "mpn", s) / "attention_summary.json")
                 for s in seeds]
    result = {
        "seeds": list(seeds), "budget": budget(mpn[0]["params"]),
        "claim1": {"metrics": claim1, "baselines_r1": baselines,
                   "verdicts": {k: verdict(v["difference"]["values"]) for k, v in claim1.items()}},
        "claim2": {"metrics": claim2, "feature_space": inference[0]["feature_space"],
                   "verdicts": {k: verdict(v["difference"]["values"]) for k, v in claim2.items()}},
        "claim3": claim3(attention),
        # the paper recipes' runs, where they sit beside the study in the same outputs folder
        "paper": paper_comparison(find_paper_runs(study_dir.parent)),
    }
    write_json(study_dir / "claims.json", result)
    return result


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

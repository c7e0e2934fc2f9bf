"""The attention study (notebooks/07_attention_study): train every setting of
ibdml.attention_study.SETTINGS for every seed into <study>/<setting>-seed<S>/ (validation classes
held out, test never evaluated), summarise each run's attention, and write
<study>/attention_study.json with the statistics of ibdml.attention_study. The runs are Ray tasks
(ibdml.cluster), in parallel on this machine's cores or on a cluster with `address`; every run
resumes on its own, so an interrupted study continues where it stopped.

When a setting makes attention clearly selective without lowering validation MAP@R, the study
writes its parameters to <study>/glyphs_attention.yaml, the candidate for the teaching preset
params/glyphs_attention.yaml (docs/results.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ibdml.attention_study import PROTOCOL, SETTINGS, conclusion, run_measures, setting_result
from ibdml.cluster import ray_session, run_tasks
from ibdml.config import Params, load_params, read_params_file
from ibdml.data.check import check_run_inputs
from ibdml.steps.attention import summarise_run
from ibdml.steps.rundir import read_json, run_lock, write_json
from ibdml.steps.train import train


def run_dir_of(study_dir: Path, setting: str, seed: int) -> Path:
    return Path(study_dir) / f"{setting}-seed{seed}"


def setting_params(params_file: str | Path, setting: str, seed: int,
                   overrides: dict[str, Any] | None = None) -> Params:
    """A setting's parameters: the file, the overrides, the setting's change, the study's
    protocol (validation held out and selected on) and the seed, in that order of precedence."""
    return load_params(params_file, {**(overrides or {}), **SETTINGS[setting][1], **PROTOCOL,
                                     "seed": seed})


def run_attention_study(params_file: str | Path, study_dir: str | Path, seeds: Sequence[int],
                        overrides: dict[str, Any] | None = None, *,
                        settings: Sequence[str] | None = None, address: str | None = None,
                        cpus_per_run: float = 1, gpus_per_run: float = 0,
                        log: Callable[[str], None] = print) -> dict:
    """Train the runs that are missing (Ray tasks of `cpus_per_run` CPUs and `gpus_per_run`
    GPUs) of `settings` (default: all of SETTINGS; "default" is always among them, as every
    setting is compared with it), then summarise into <study>/attention_study.json; returns it.
    Holds the study folder's lock throughout, each task its run folder's."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be at least two distinct ones (an interval over seeds "
                         f"needs two), got {list(seeds)}")
    unknown = set(settings or ()) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; choose among {list(SETTINGS)}")
    names = [s for s in SETTINGS if settings is None or s in settings or s == "default"]
    study_dir, start = Path(study_dir).resolve(), time.time()
    jobs = [(setting_params(params_file, s, seed, overrides), run_dir_of(study_dir, s, seed))
            for seed in seeds for s in names]
    if jobs[0][0].mpn_layers == 0 or jobs[0][0].attention_probes == 0:
        raise ValueError("the attention study needs an MPN (mpn_layers ≥ 1) and recorded "
                         "attention (attention_probes ≥ 1)")
    check_run_inputs(jobs[0][0], progress=False)  # the data, once, before the runs start
    with run_lock(study_dir), ray_session(address):
        log(f"{len(jobs)} runs as Ray tasks ({cpus_per_run:g} CPU, {gpus_per_run:g} GPU each)")
        run_tasks(_run_setting, jobs, cpus=cpus_per_run, gpus=gpus_per_run)
        return _summarise(study_dir, params_file, names, seeds, time.time() - start)


def _run_setting(p: Params, run: Path) -> None:
    """Train one run and summarise its attention, under its lock (a Ray task)."""
    with run_lock(run):
        print(f"[{run.name}] training ({p.epochs} epochs)", flush=True)
        train(p, run, progress=False)
        summarise_run(run)


def _summarise(study_dir: Path, params_file: str | Path, names: list[str],
               seeds: Sequence[int], seconds: float) -> dict:
    measures = {s: [run_measures(read_json(run_dir_of(study_dir, s, seed) /
                                           "attention_summary.json")["summary"],
                                 read_json(run_dir_of(study_dir, s, seed) / "history.json"))
                    for seed in seeds] for s in names}
    results = {s: setting_result(m, measures["default"]) for s, m in measures.items()}
    verdict = conclusion(results)
    result = {"seeds": list(seeds), "settings": {s: {"label": SETTINGS[s][0],
                                                     "changes": SETTINGS[s][1]} for s in names},
              "protocol": PROTOCOL, "runs": measures, "results": results,
              "conclusion": verdict, "seconds_this_call": round(seconds, 1)}
    write_json(study_dir / "attention_study.json", result)
    if verdict["chosen"]:
        _write_preset(study_dir / "glyphs_attention.yaml", params_file, verdict)
    return result


def _write_preset(path: Path, params_file: str | Path, verdict: dict) -> None:
    """The parameters file with the chosen setting's changes applied, headed by the conclusion."""
    import yaml

    values = {**read_params_file(params_file), **SETTINGS[verdict["chosen"]][1]}
    header = "".join(f"# {line}\n" for line in
                     ["The teaching preset chosen by the attention study "
                      "(notebooks/07_attention_study):", verdict["text"]])
    path.write_text(header + yaml.safe_dump(values, sort_keys=False), encoding="utf-8")

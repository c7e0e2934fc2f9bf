"""Run every benchmark and write bench/RESULTS.md and bench/results.json (`make bench`).

    .venv/bin/python bench/run_all.py                 # the full run, ~22 min on 2 cores
    .venv/bin/python bench/run_all.py --tiny          # every tiny mode, into outputs/bench/tiny/
    .venv/bin/python bench/run_all.py --render-only   # RESULTS.md again from results.json
    .venv/bin/python bench/run_all.py --steps evaluate  # re-measure some steps, keep the rest

What runs, one after the other, each in its own Python process (its raw output, printed and as
JSON, under outputs/bench/, git-ignored):
  evaluation    bench/evaluate.py: `ibdml.metrics.evaluate` against pytorch-metric-learning's
                AccuracyCalculator at N = 5,924 / 20,000 / 60,502, side by side; target: ours
                takes ≤ 0.7× PML's time at every N, with R@1 and MAP@R equal to 1e-6
  training      bench/train_overhead.py: step time with the MPN against without it at the
                paper's four batch shapes (resnet18, 64 px, CPU); target: overhead ≤ 5 %
  inference     bench/mpn_inference.py --sizes CUB 20k --kinds clustered, --runs times:
                vectorised reciprocal k-NN neighbourhoods against the per-sample loop
                (SOP-size end to end only with --mpn-sop: two more minutes a run)
  Glyphs        a cold render of the default Glyphs set (params/glyphs.yaml) into a fresh
                temporary folder, --runs times, each in a fresh process (no in-memory caches)
  make run      what `make run` runs, `ibdml run params/glyphs.yaml`, into a fresh temporary run
                folder, --pipeline-runs times (default 3, ~3.5 min each), each in a fresh
                process: wall time of the whole command and each notebook step's seconds
                (the Glyphs cache under data_root is built by the first run if it is cold)
  scale-out     bench/scale_out.py: two Glyphs training runs as Ray tasks of 1 CPU each, in
                parallel, against the same two one after the other; target: parallel /
                sequential ≤ 0.6 on 2 cores
Every figure in RESULTS.md is a median of the runs made here, and every ratio was measured
within one process, the two sides alternating. The load average before and after each step is
recorded: other work on the machine slows everything, and only a quiet machine gives figures
worth comparing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = ROOT / "outputs" / "bench"
EVALUATE_TARGET = 0.7  # ours / PML seconds
OVERHEAD_TARGET = 0.05  # MPN training step overhead

# One cold render of the Glyphs set, in a fresh process: argv = params file, then overrides.
GLYPHS_SNIPPET = """
import json, sys, tempfile, time
from pathlib import Path
from ibdml.config import load_params
from ibdml.data.glyphs import build_glyphs
p = load_params(sys.argv[1], sys.argv[2:])
with tempfile.TemporaryDirectory(prefix="ibdml-bench-glyphs-") as root:
    start = time.perf_counter()
    build_glyphs(Path(root), classes=p.glyph_classes, images_per_class=p.glyph_images_per_class,
                 image_size=p.image_size, seed=p.glyph_seed, progress=False)
    seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "images": p.glyph_classes * p.glyph_images_per_class,
                  "classes": p.glyph_classes, "image_size": p.image_size}))
"""
TINY_GLYPHS = ["glyph_classes=16", "glyph_train_classes=8", "glyph_images_per_class=10"]


# ---------------------------------------------------------------------------------------------
# Running the scripts
# ---------------------------------------------------------------------------------------------


def run_logged(name: str, args: list[str], out: Path) -> dict:
    """Run `python args...` from the repository root, echo and save its output to
    out/<name>.txt; returns {"rc", "seconds", "log", "load_before", "load_after"}."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}.txt"
    load_before = os.getloadavg()[0]
    busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            print(f"  {line}", end="", flush=True)
        rc = proc.wait()
    seconds = time.perf_counter() - start
    busy_after = _busy_cpu_seconds()
    other = None if busy is None else max(busy_after - busy - (_own_cpu_seconds() - own), 0.0)
    return {"rc": rc, "seconds": round(seconds, 1), "log": _relative(log),
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "other_cpu_s": other, "cpu_available_s": seconds * (os.cpu_count() or 1)}


def _busy_cpu_seconds() -> float | None:
    """CPU-seconds the machine has spent busy since boot, all processes (/proc/stat), or None
    where there is no /proc/stat."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU-seconds of this process and of its children that have finished."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_script(name: str, script: str, args: list[str], out: Path) -> dict:
    """Run bench/<script> with `args` and `--json`, logged as `name`: {"run", "result"}."""
    target = out / f"{name}.json"
    target.unlink(missing_ok=True)
    run = run_logged(name, [f"bench/{script}", *args, "--json", str(target)], out)
    return {"run": run, "result": read_json(target)}


def bench_evaluate(out: Path, tiny: bool) -> dict:
    return run_script("evaluate", "evaluate.py", ["--tiny"] if tiny else [], out)


def bench_train_overhead(out: Path, tiny: bool) -> dict:
    return run_script("train_overhead", "train_overhead.py", ["--tiny"] if tiny else [], out)


def bench_mpn_inference(out: Path, tiny: bool, runs: int, sop: bool) -> dict:
    what = ["--tiny"] if tiny else ["--sizes", "CUB", "20k", *(["SOP"] if sop else []),
                                    "--kinds", "clustered"]
    results = [run_script(f"mpn_inference_{i + 1}", "mpn_inference.py", what, out)
               for i in range(1 if tiny else runs)]
    return {"runs": results, "summary": None if tiny else summarise_mpn_inference(results)}


def summarise_mpn_inference(runs: list[dict]) -> list[dict]:
    """Per (kind, N): the median over runs of each figure, and of the per-run loop/vectorised
    ratio (each run measured both in one process)."""
    rows: dict[tuple, list[dict]] = {}
    for run in runs:
        for row in (run["result"] or {}).get("rows", []):
            rows.setdefault((row["kind"], row["n"]), []).append(row)
    summary = []
    for (kind, n), found in rows.items():
        row = {"kind": kind, "n": n, "runs": len(found)}
        for key in ("search", "vectorised", "after", "loop", "refine"):
            if all(key in r for r in found):
                row[key] = statistics.median(r[key] for r in found)
        if "loop" in row:
            row["speedup"] = statistics.median(r["loop"] / r["vectorised"] for r in found)
            row["agree"] = all(r["agree"] for r in found)
        summary.append(row)
    return summary


def bench_glyphs(out: Path, tiny: bool, runs: int) -> dict:
    """Cold renders of the default Glyphs set, each in a fresh process into a fresh folder."""
    overrides = TINY_GLYPHS if tiny else []
    results = []
    for i in range(1 if tiny else runs):
        run = run_logged(f"glyphs_build_{i + 1}", ["-c", GLYPHS_SNIPPET, "params/glyphs.yaml",
                                                   *overrides], out)
        log = (ROOT / run["log"]).read_text().strip().splitlines()
        result = json.loads(log[-1]) if run["rc"] == 0 and log else None
        results.append({"run": run, "result": result})
    seconds = [r["result"]["seconds"] for r in results if r["result"]]
    return {"runs": results, "median_s": statistics.median(seconds) if seconds else None,
            "params": "params/glyphs.yaml" + (f" with {' '.join(overrides)}" if tiny else "")}


def bench_scale_out(out: Path, tiny: bool) -> dict:
    return run_script("scale_out", "scale_out.py", ["--tiny"] if tiny else [], out)


def bench_pipeline(out: Path, tiny: bool, runs: int) -> dict:
    """`make run`'s command, `ibdml run PARAMS --out <fresh folder>`, `runs` times, each in a
    fresh process and a fresh temporary run folder (the Glyphs cache is shared, as for users)."""
    params = "params/smoke.yaml" if tiny else "params/glyphs.yaml"
    results = []
    for i in range(1 if tiny else runs):
        with tempfile.TemporaryDirectory(prefix="ibdml-bench-run-") as folder:
            run = run_logged(f"pipeline_{i + 1}", ["-m", "ibdml.cli", "run", params, "--out",
                                                   folder], out)
            results.append({"run": run, "steps": read_json(Path(folder) / "pipeline.json")})
    return {"params": params, **summarise_pipeline(results)}


def summarise_pipeline(runs: list[dict]) -> dict:
    """Median wall time of the runs whose every step finished, and each step's median seconds."""
    done = [r for r in runs if r["run"]["rc"] == 0 and r["steps"]
            and all(step.get("status") == "done" for step in r["steps"].values())]
    steps = {name: statistics.median(r["steps"][name]["seconds"] for r in done)
             for name in (done[0]["steps"] if done else {})}
    return {"runs": runs, "done": len(done), "steps_median_s": steps,
            "median_s": statistics.median(r["run"]["seconds"] for r in done) if done else None}


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    ram = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 2**20, 1)  # kB → GiB
    return {"cpu": cpu, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "ram_gib": ram, "gpu": _gpu(), "python": platform.python_version(),
            "versions": {name: _version(name) for name in
                         ("torch", "numpy", "faiss-cpu", "faiss-gpu", "pytorch-metric-learning")}}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# ---------------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------------


def _s(seconds: float | None, digits: int = 2) -> str:
    return "—" if seconds is None else f"{seconds:.{digits}f} s"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("**yes**" if ok else "**no**")


def evaluate_rows(results: dict) -> list[dict]:
    return ((results.get("evaluate") or {}).get("result") or {}).get("rows", [])


def overhead_rows(results: dict) -> list[dict]:
    return ((results.get("train_overhead") or {}).get("result") or {}).get("rows", [])


def summary_table(results: dict) -> list[str]:
    lines = ["| measurement | ibdml | reference | ratio, side by side | target | met |",
             "|---|---|---|---|---|---|"]
    evaluation = (results.get("evaluate") or {}).get("result") or {}
    if evaluation.get("skipped"):
        lines.append(f"| evaluation vs PML | — | — | — | ≤ {EVALUATE_TARGET}× | not run: "
                     "pytorch-metric-learning missing |")
    for row in evaluate_rows(results):
        ratio = row["ratio_paired_median"]
        lines.append(f"| evaluation (R@1 + MAP@R), N = {row['n']:,} ({row['set']}) | "
                     f"{_s(row['ours_median_s'], 3)} | PML {_s(row['pml_median_s'], 3)} | "
                     f"{ratio:.2f}× | ≤ {EVALUATE_TARGET}× and equal to 1e-6 "
                     f"(max diff {row['max_abs_diff']:.1e}) | "
                     f"{_met(ratio <= EVALUATE_TARGET and row['agree'])} |")
    for row in overhead_rows(results):
        lines.append(f"| training step with MPN, {row['shape']} {row['n_c']} × {row['n_s']} | "
                     f"{1000 * row['mpn_median_s']:.0f} ms | without MPN "
                     f"{1000 * row['backbone_median_s']:.0f} ms | {100 * row['overhead']:+.1f} % | "
                     f"≤ +{100 * OVERHEAD_TARGET:.0f} % | "
                     f"{_met(row['overhead'] <= OVERHEAD_TARGET)} |")
    for row in (results.get("mpn_inference") or {}).get("summary") or []:
        ref = f"loop {_s(row.get('loop'), 1)}" if "loop" in row else "—"
        ratio = f"{row['speedup']:.0f}× faster" if "speedup" in row else "—"
        lines.append(f"| MPN-at-inference neighbourhoods, N = {row['n']:,} ({row['kind']}) | "
                     f"{_s(row['vectorised'])} | {ref} | {ratio} | — | — |")
    glyphs = results.get("glyphs") or {}
    if glyphs:
        lines.append(f"| Glyphs cache, cold render | {_s(glyphs.get('median_s'), 1)} | — | — "
                     "| — | — |")
    scale = (results.get("scale_out") or {}).get("result")
    if scale:
        lines.append(f"| 2 Glyphs runs in parallel on Ray, 1 CPU each | "
                     f"{_s(scale['parallel_median_s'], 0)} | one after the other "
                     f"{_s(scale['sequential_median_s'], 0)} | {scale['ratio']:.2f}× | "
                     f"≤ {scale['target']}× | {_met(scale['ratio'] <= scale['target'])} |")
    pipeline = results.get("pipeline") or {}
    if pipeline.get("median_s") is not None:
        lines.append(f"| `make run` (`ibdml run {pipeline['params']}`, wall time) | "
                     f"{pipeline['median_s']:.0f} s | — | — | — | — |")
    else:
        lines.append("| `make run` | not measured | — | — | — | — |")
    return lines


def evaluate_section(results: dict) -> list[str]:
    block = results.get("evaluate") or {}
    evaluation = block.get("result") or {}
    lines = ["## Evaluation against pytorch-metric-learning (`bench/evaluate.py`)", ""]
    if not evaluation:
        return lines + [f"Failed: see `{block.get('run', {}).get('log')}`.", ""]
    if evaluation.get("skipped"):
        return lines + [evaluation["skipped"], ""]
    threads = evaluation["threads"]
    lines += [
        "Random 512-d unit embeddings with class structure (class centre + Gaussian noise), the "
        "same tensor given to `ibdml.metrics.evaluate(x, labels, ks=(1,), nmi=False)` and to "
        "`AccuracyCalculator(include=(\"precision_at_1\", \"mean_average_precision_at_r\"), "
        "k=\"max_bin_count\").get_accuracy(x, labels)` (query = reference; PML removes each "
        "query's own index). Seconds are medians of the repetitions; the ratio is the median of "
        "the per-repetition ratios ours / PML, the two alternating in one process (the ratio of "
        "the medians beside it).",
        "",
        f"Threads: torch {threads['torch_threads']}, faiss OpenMP {threads['faiss_omp_threads']}; "
        f"pools: {'; '.join(threads['pools'])}.",
        "",
        "| set | N | classes (sizes) | R@1 | MAP@R | max \\|ours − PML\\| | ours: backend | "
        "ours | PML: backend | PML | ours / PML (paired; of medians) | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in evaluation["rows"]:
        lines.append(
            f"| {row['set']} | {row['n']:,} | {row['classes']:,} ({row['smallest']}–"
            f"{row['largest']}) | {row['ours']['r_at_1']:.4f} | {row['ours']['map_at_r']:.4f} | "
            f"{row['max_abs_diff']:.1e} | {row['ours_backend']} | {_s(row['ours_median_s'], 3)} | "
            f"{row['pml_backend']} | {_s(row['pml_median_s'], 3)} | "
            f"{row['ratio_paired_median']:.2f}; {row['ratio_of_medians']:.2f} | {row['repeats']} |")
    profiled = [row for row in evaluation["rows"] if "breakdown" in row]
    if profiled:
        lines += ["", "Where the time goes (medians of up to 3 further runs of each part):", "",
                  "| set | ours: k-NN search | labels | R@1 | MAP@R | PML: faiss search | "
                  "PML: the rest of get_accuracy |", "|---|---|---|---|---|---|---|"]
        for row in profiled:
            b = row["breakdown"]
            rest = max(row["pml_median_s"] - b["pml_search_median_s"], 0.0)
            lines.append(f"| {row['set']} | {_s(b['ours_search_median_s'], 3)} | "
                         f"{_s(b['ours_labels_median_s'], 4)} | "
                         f"{_s(b['ours_recall_median_s'], 4)} | "
                         f"{_s(b['ours_map_at_r_median_s'], 3)} | "
                         f"{_s(b['pml_search_median_s'], 3)} | {_s(rest, 3)} |")
    return lines + [""]


def overhead_section(results: dict) -> list[str]:
    block = results.get("train_overhead") or {}
    result = block.get("result") or {}
    lines = ["## MPN training overhead (`bench/train_overhead.py`)", ""]
    if not result:
        return lines + [f"Failed: see `{block.get('run', {}).get('log')}`.", ""]
    lines += [
        f"{result['device']} ({result['device_type']}, torch {result['torch_threads']} threads), "
        f"{result['backbone']} at {result['image_size']} px, random images; one MPN layer with "
        "the paper's heads and both losses against `mpn_layers: 0` with `loss_heads: backbone`; "
        f"{result['steps']} timed steps of each after {result['warmup']} warm-up steps, the two "
        "alternating step by step. Overhead = median MPN step / median backbone-only step − 1 "
        "(the median of the per-step ratios beside it).",
        "",
        "| shape | images | heads | classes | with MPN | without | img/s with / without | "
        "overhead (paired) | ≤ 5 % | optimiser step with / without (weights) | "
        "the MPN's FLOPs | its optimiser step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        optimiser = flops = optimiser_share = "—"
        if "mpn_optimiser_median_s" in row:
            optimiser = (f"{1000 * row['mpn_optimiser_median_s']:.1f} / "
                         f"{1000 * row['backbone_optimiser_median_s']:.1f} ms "
                         f"({row['mpn_parameters'] / 1e6:.2f} / "
                         f"{row['backbone_parameters'] / 1e6:.2f} M)")
        if "flop_share" in row:
            flops = (f"{100 * row['flop_share']:+.1f} % of "
                     f"{row['backbone_flops'] / 1e9:.1f} GFLOP")
            optimiser_share = f"{100 * row['optimiser_share']:+.1f} %"
        lines.append(
            f"| {row['shape']} {row['n_c']} × {row['n_s']} | {row['batch']} | {row['mpn_heads']} "
            f"| {row['classes']:,} | {1000 * row['mpn_median_s']:.1f} ms | "
            f"{1000 * row['backbone_median_s']:.1f} ms | {row['mpn_images_per_s']:.0f} / "
            f"{row['backbone_images_per_s']:.0f} | {100 * row['overhead']:+.1f} % "
            f"({100 * row['overhead_paired']:+.1f} %) | {_met(row['met'])} | {optimiser} | "
            f"{flops} | {optimiser_share} |")
    return lines + [
        "", "The optimiser step is timed alone afterwards (median of as many runs as timed "
        "steps, on the last gradients): the part of a step that grows with the number of "
        "weights, not with the batch. *The MPN's FLOPs*: one further step of each variant "
        "under torch's FlopCounterMode (matrix products and convolutions, forward and "
        "backward), the MPN variant's extra FLOPs as a share of the backbone-only step's: "
        "the arithmetic any implementation of this network must do. *Its optimiser step*: "
        "the optimiser step's extra time as a share of the backbone-only step. Their sum is "
        "roughly the overhead's floor on this machine, before the MPN's small matrices run "
        "below the convolutions' FLOP rate.", ""]


def mpn_inference_section(results: dict) -> list[str]:
    block = results.get("mpn_inference") or {}
    lines = ["## MPN at inference (`bench/mpn_inference.py`)", ""]
    summary = block.get("summary")
    runs = block.get("runs", [])
    if not summary:
        agree = [(r["result"] or {}).get("agree") for r in runs]
        return lines + [f"Tiny mode only: the vectorised neighbourhoods agree with the loop: "
                        f"{all(agree) if agree else None}.", ""]
    lines += [
        f"Reciprocal k-NN neighbourhoods (k = 30, 7 nodes) on clustered random 512-d "
        f"embeddings; {len(runs)} runs of the script, each in a fresh process; medians over the "
        "runs (within a run: best of 3 for the vectorised parts, one run of the loop); the "
        "speed-up is the median of the per-run ratios loop / vectorised.",
        "",
        "| N | kind | k-NN search (floor) | vectorised neighbourhoods | after the search | "
        "per-sample loop | speed-up | refine (SOP) | agree |",
        "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        speedup = f"{row['speedup']:.1f}×" if "speedup" in row else "—"
        lines.append(f"| {row['n']:,} | {row['kind']} | {_s(row['search'])} | "
                     f"{_s(row['vectorised'])} | {_s(row['after'])} | {_s(row.get('loop'), 1)} | "
                     f"{speedup} | {_s(row.get('refine'))} | {row.get('agree', '—')} |")
    return lines + [""]


def glyphs_section(results: dict) -> list[str]:
    glyphs = results.get("glyphs") or {}
    lines = ["## Glyphs cache build", ""]
    done = [r["result"] for r in glyphs.get("runs", []) if r["result"]]
    if not done:
        return lines + ["Failed: see the logs `outputs/bench/glyphs_build_*.txt`.", ""]
    first = done[0]
    each = ", ".join(f"{r['seconds']:.1f}" for r in done)
    return lines + [
        f"`build_glyphs` with {glyphs['params']} ({first['classes']} classes, "
        f"{first['images']:,} images at {first['image_size']} px, 2 render processes), into a "
        f"fresh temporary folder, each run in a fresh Python process (imports not timed): "
        f"median **{glyphs['median_s']:.1f} s** of {len(done)} run{'s' * (len(done) > 1)} "
        f"({each} s), "
        f"{first['images'] / glyphs['median_s']:.0f} images/s.", ""]


def scale_out_section(results: dict) -> list[str]:
    block = results.get("scale_out") or {}
    lines = ["## Scale-out: many runs on Ray", ""]
    scale = block.get("result")
    if not block:
        return []
    if not scale:
        return lines + ["Failed: see the log `outputs/bench/scale_out.txt`.", ""]
    each = "; ".join(f"{a:.0f} s against {b:.0f} s" for a, b in
                     zip(scale["times"]["parallel"], scale["times"]["sequential"]))
    return lines + [
        f"`bench/scale_out.py`: two Glyphs training runs (`params/glyphs.yaml`, seeds 0 and 1, "
        f"{scale['epochs']} epochs, evaluated once at the end), trained as two Ray tasks of 1 CPU "
        f"each on a local Ray started for them (its start and stop included), against the same "
        f"two trained one after the other in one process with torch on "
        f"{scale['torch_threads_sequential']} threads, on {scale['cores']} cores (sequential first, "
        f"then parallel, in each of {len(scale['times']['parallel'])} round(s)). Parallel **{scale['parallel_median_s']:.0f} s**, sequential "
        f"**{scale['sequential_median_s']:.0f} s** (each pair: {each}): parallel / sequential "
        f"**{scale['ratio']:.2f}** (target ≤ {scale['target']}).",
        ""]


def make_run_section(results: dict) -> list[str]:
    pipeline = results.get("pipeline") or {}
    lines = ["## `make run`", ""]
    runs = pipeline.get("runs", [])
    if pipeline.get("median_s") is None:
        logs = ", ".join(f"`{r['run']['log']}`" for r in runs) or "no run was made"
        return lines + [f"Not measured: no pipeline run finished (see {logs}).", ""]
    each = ", ".join(f"{r['run']['seconds']:.0f}" for r in runs)
    steps = ", ".join(f"{name} {seconds:.1f} s"
                      for name, seconds in pipeline["steps_median_s"].items())
    failed = len(runs) - pipeline["done"]
    return lines + [
        f"`make run` runs `ibdml run {pipeline['params']}`; here that command ran "
        f"{len(runs)} time{'s' * (len(runs) > 1)}, each in a fresh process into a fresh "
        "temporary run folder, the Glyphs cache shared (so only a first run on a new machine "
        f"renders it). Wall time of the whole command: median **{pipeline['median_s']:.0f} s** "
        f"({each} s){f'; {failed} run(s) failed' if failed else ''}. Median seconds of each "
        f"notebook step: {steps}; the rest is Python's start-up and the papermill kernels'.",
        ""]


def render(results: dict) -> str:
    m = results["machine"]
    versions = m["versions"]
    faiss = (f"faiss-cpu {versions['faiss-cpu']}" if versions.get("faiss-cpu")
             else f"faiss-gpu {versions.get('faiss-gpu')}")
    loads = [(name, block["run"]) for name, block in results.items()
             if isinstance(block, dict) and isinstance(block.get("run"), dict)]
    loads += [(f"{name} {i + 1}", run["run"])
              for name in ("mpn_inference", "glyphs", "pipeline")
              for i, run in enumerate((results.get(name) or {}).get("runs", []))]
    load_text = "; ".join(f"{name} {run['load_before']:.2f} → {run['load_after']:.2f}"
                          for name, run in loads)
    other_text = "; ".join(f"{name} {run['other_cpu_s']:.1f} of {run['cpu_available_s']:.0f}"
                           for name, run in loads if run.get("other_cpu_s") is not None)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/run_all.py` (`make bench`) on {results['date']}"
        f"{' in TINY mode: these are smoke figures, not results' if results['tiny'] else ''}. "
        "Every figure comes from this run; the raw output of each script is under "
        f"`{results.get('raw', 'outputs/bench')}/` (git-ignored) and every number is in "
        f"`{results.get('results_json', 'bench/results.json')}`. "
        f"Total wall time {results['seconds'] / 60:.1f} min.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['ram_gib']} GiB RAM, GPU: {m['gpu'] or 'none'}. Python {m['python']}, torch "
        f"{versions['torch']}, numpy {versions['numpy']}, {faiss}, pytorch-metric-learning "
        f"{versions['pytorch-metric-learning'] or 'not installed'}.",
        "",
        *remeasured_text(results),
        "Other work on the machine during each step, in CPU-seconds used by processes other "
        "than the benchmark (from /proc/stat, less the benchmark's own CPU time), of the "
        f"cores × wall seconds there were: {other_text or 'not recorded in this run'}. Figures "
        "from a step where other work took more than a few per cent shared the cores and read "
        "slow.",
        "",
        f"Load average (1 min) before → after each step (it counts the benchmark's own threads "
        f"too): {load_text}.",
        "",
        "## Summary",
        "",
        *summary_table(results),
        "",
        *evaluate_section(results),
        *overhead_section(results),
        *mpn_inference_section(results),
        *glyphs_section(results),
        *make_run_section(results),
        *scale_out_section(results),
    ]
    return "\n".join(lines).rstrip() + "\n"


def all_ok(results: dict) -> bool:
    """Every script ran and every comparison agreed (timing targets are reported, not
    enforced)."""
    runs = [block["run"] for block in results.values()
            if isinstance(block, dict) and isinstance(block.get("run"), dict)]
    runs += [r["run"] for name in ("mpn_inference", "glyphs", "pipeline")
             for r in (results.get(name) or {}).get("runs", [])]
    agree = all(row["agree"] for row in evaluate_rows(results))
    agree &= all((r["result"] or {}).get("agree", False)
                 for r in (results.get("mpn_inference") or {}).get("runs", []))
    return all(run["rc"] == 0 for run in runs) and agree


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


STEP_NAMES = ("evaluate", "train_overhead", "mpn_inference", "glyphs", "pipeline", "scale_out")


def remeasure(args: argparse.Namespace, raw: Path, out: Path) -> int:
    """--steps: run only the named steps and put them into the existing results.json, each
    with the date and machine of its own measurement (render says which steps these are)."""
    results = json.loads((out / "results.json").read_text())
    run = {"evaluate": lambda: bench_evaluate(raw, args.tiny),
           "train_overhead": lambda: bench_train_overhead(raw, args.tiny),
           "mpn_inference": lambda: bench_mpn_inference(raw, args.tiny, args.runs, args.mpn_sop),
           "glyphs": lambda: bench_glyphs(raw, args.tiny, args.runs),
           "pipeline": lambda: bench_pipeline(raw, args.tiny, args.pipeline_runs or 1),
           "scale_out": lambda: bench_scale_out(raw, args.tiny)}
    for name in args.steps:
        print(f"== {name}", flush=True)
        date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        results[name] = {**run[name](), "measured": {"date": date, "machine": machine()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(render(results))
    print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
    return 0 if all_ok(results) else 1


def remeasured_text(results: dict) -> list[str]:
    """A paragraph naming the steps measured after the full run, with their date and machine."""
    lines = []
    for name in STEP_NAMES:
        measured = (results.get(name) or {}).get("measured")
        if measured:
            m = measured["machine"]
            lines.append(f"`{name}` was measured again on {measured['date']} (`--steps`), on "
                         f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, GPU: "
                         f"{m['gpu'] or 'none'}, torch {m['versions']['torch']}: its figures "
                         "below come from that run, the others from the full run.")
    return [" ".join(lines), ""] if lines else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="every script's tiny mode; writes into outputs/bench/tiny/ only")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of the MPN-inference script and of the Glyphs render")
    parser.add_argument("--pipeline-runs", type=int, default=3,
                        help="runs of `make run`'s command (0: not measured)")
    parser.add_argument("--mpn-sop", action="store_true",
                        help="MPN at inference at SOP size too (end to end with refine)")
    parser.add_argument("--out", type=Path, help="where RESULTS.md and results.json go "
                        "(default: bench/, or outputs/bench/tiny/ with --tiny)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md from the results.json there")
    parser.add_argument("--steps", nargs="+", choices=STEP_NAMES,
                        help="measure only these steps and replace them in the results.json "
                        "there (each keeps its own date and machine in RESULTS.md)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.pipeline_runs < 0:
        parser.error("--runs must be ≥ 1 and --pipeline-runs ≥ 0")
    raw = OUT / "tiny" if args.tiny else OUT
    out = args.out or (raw if args.tiny else BENCH)
    if args.render_only:
        (out / "RESULTS.md").write_text(render(json.loads((out / "results.json").read_text())))
        print(f"rewrote {out / 'RESULTS.md'} from {out / 'results.json'}")
        return 0
    if args.steps:
        return remeasure(args, raw, out)
    start = time.perf_counter()
    results = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "tiny": args.tiny, "machine": machine()}
    steps = [("evaluate", lambda: bench_evaluate(raw, args.tiny)),
             ("train_overhead", lambda: bench_train_overhead(raw, args.tiny)),
             ("mpn_inference", lambda: bench_mpn_inference(raw, args.tiny, args.runs,
                                                           args.mpn_sop)),
             ("glyphs", lambda: bench_glyphs(raw, args.tiny, args.runs))]
    if args.pipeline_runs:
        steps.append(("pipeline", lambda: bench_pipeline(raw, args.tiny, args.pipeline_runs)))
    steps.append(("scale_out", lambda: bench_scale_out(raw, args.tiny)))
    assert {name for name, _ in steps} <= set(STEP_NAMES)
    for name, step in steps:
        print(f"== {name}", flush=True)
        results[name] = step()
    results["seconds"] = time.perf_counter() - start
    results["raw"] = _relative(raw)
    results["results_json"] = _relative(out / "results.json")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(render(results))
    print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
    return 0 if all_ok(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# The GPU check: one command, on a machine with GPUs, that measures and checks what ibdml claims
# there, and prints one summary table at the end (bench/README.md, "GPU check").
#
#     bash bench/gpu_check.sh                          # after `make setup`, with a CUDA torch and
#                                                      # faiss-gpu as in environment.yml
#     GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh    # no GPU: tiny CPU versions, to test this
#                                                      # script (their numbers mean nothing)
#
# Sections (each its own process, under its own `timeout`; a failing one is FAILED in the table
# and the rest carry on; the whole script stays under GPU_CHECK_BUDGET seconds, default 570):
#   bf16 policy     bf16 autocast only on compute capability >= 8.0: each visible GPU, and
#                   simulated 7.0, 7.5 and 8.0 GPUs (device.bf16_enabled); fp32 on a GPU has TF32
#                   off (device.exact_fp32), and the flags are restored afterwards
#   train speed     bench/train_speed.py: the CUB shape (6 x 9 at 227 px, resnet50, bf16
#                   autocast) on one GPU; target >= 1,500 img/s on an H100-class GPU
#   evaluation      ibdml.metrics.evaluate at SOP size (60,502 x 512 random unit embeddings with
#                   class structure, bench/evaluate.py's data) with faiss-gpu, median of 3, in a
#                   process that uses CUDA (as a GPU run's is); and how many faiss GPU resources
#                   objects the process made (one per device, retrieval._gpu_resources)
#   DDP             `ibdml train` on 1 GPU and `ibdml train --nproc G` on all G visible GPUs,
#                   Glyphs at 227 px in the CUB shape; images_per_second of the last epoch
#                   (history.json: all processes together) and the scaling efficiency
#   sweep           `ibdml sweep` of 2 trials with 1 GPU each; search.json has a chosen trial,
#                   only that trial's test split was evaluated (its metrics.json), best.yaml
#                   exists; the same command again resumes without training anything
#   resume          training 2 epochs against training 1, interrupted, then resumed for 1, on the
#                   GPU as runs train (cuDNN autotuned, not deterministic): the resumed weights
#                   may differ from the straight run's by no more than 10x what a second straight
#                   run differs by (floating-point noise: docs/datasets.md, "On a GPU"), and the
#                   checkpoint carries one CUDA generator state
#
# Hooks that do not exist, and what is checked instead:
#   - GPU training is not bit-reproducible and ibdml has no "deterministic" parameter: the resume
#     section measures the run-to-run noise with a second straight run and bounds the resumed
#     run's difference by it. All runs share one process, hence one autotuning cache.
#   - the bf16 policy can only be tested on the GPUs present; other compute capabilities are
#     simulated by patching torch.cuda.get_device_capability, with is_bf16_supported patched to
#     say yes (as it does where bf16 is only emulated) so that it cannot be what decides.
#   - the faiss resources count covers what ibdml.metrics.evaluate creates in one process on one
#     device; several devices in one process are tested with a stand-in faiss
#     (tests/test_retrieval.py).
#
# Environment: PYTHON (default .venv/bin/python), GPU_CHECK_ALLOW_CPU=1, GPU_CHECK_BUDGET
# (seconds), GPU_CHECK_DATA (Glyphs cache, default ~/.cache/ibdml/glyphs, reused between runs),
# GPU_CHECK_KEEP=1 (keep the temporary folder of logs and run folders even when all passed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PY="${PYTHON:-$ROOT/.venv/bin/python}"
TAB=$'\t'

# --- helpers ------------------------------------------------------------------------------------

# result SECTION STATUS MEASURED TARGET NOTE: one row of the summary table (tab-separated, read
# back from the section's log). Python sections print the same line themselves.
result() {
    printf 'RESULT\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5"
}

ibdml() {
    "$PY" -m ibdml.cli "$@"
}

# --- sections (each runs as `bash bench/gpu_check.sh --section NAME`, under timeout) -------------

section_bf16() {
    "$PY" - <<'EOF'
import os
from unittest import mock

import torch

from ibdml import device as devices

rows, wrong = [], []
for i in range(torch.cuda.device_count()):
    capability = torch.cuda.get_device_capability(i)
    on = devices.bf16_enabled(torch.device("cuda", i))
    rows.append(f"cuda:{i} cc {capability[0]}.{capability[1]}: bf16 {'on' if on else 'off'}")
    if on != (capability >= (8, 0)):
        wrong.append(rows[-1])
for capability in ((7, 0), (7, 5), (8, 0)):
    with mock.patch("torch.cuda.get_device_capability", return_value=capability), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        on = devices.bf16_enabled(torch.device("cuda", 0))
    rows.append(f"simulated cc {capability[0]}.{capability[1]}: bf16 {'on' if on else 'off'}")
    if on != (capability >= (8, 0)):
        wrong.append(rows[-1])
flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
before = flags()
with devices.exact_fp32(torch.device("cuda", 0), bf16=False):
    inside = flags()
rows.append(f"fp32: TF32 {inside} inside, {flags()} after (was {before})")
if inside != (False, False) or flags() != before:
    wrong.append(rows[-1])
status = "FAILED" if wrong else "PASS"
note = ("device.bf16_enabled ignores the compute capability: " + "; ".join(wrong)) if wrong \
    else "; ".join(rows)
print("RESULT", "bf16 policy", status, f"{len(rows) - len(wrong)}/{len(rows)} as expected",
      "bf16 autocast only on cc >= 8.0; fp32 without TF32", note, sep="\t")
EOF
}

section_train_speed() {
    local json="$WORK/train_speed.json"
    if [ "$MODE" = gpu ]; then
        "$PY" bench/train_speed.py --steps 150 --warmup 15 --eval-batches 10 --json "$json"
    else
        "$PY" bench/train_speed.py --device cpu --steps 2 --warmup 1 --eval-batches 1 \
            --eval-batch-size 16 --image-size 64 --backbone resnet18 --json "$json"
    fi
    "$PY" - "$json" <<'EOF'
import json, math, os, sys

r = json.load(open(sys.argv[1]))
ips = r["train_images_per_second"]
gpu = os.environ["MODE"] == "gpu"
status = ("PASS" if ips >= 1500 else "BELOW TARGET") if gpu else "RAN (CPU)"
if not math.isfinite(r["mean_loss"]):
    status = "FAILED"
note = (f"{r['device']}; {r['backbone']} {r['image_size']} px {r['batch_shape']}; bf16 "
        f"{'on' if r['bf16'] else 'off'}, channels_last {'on' if r['channels_last'] else 'off'}; "
        f"embedding {r['eval_images_per_second']:,.0f} img/s; loss {r['mean_loss']}")
if r.get("peak_gpu_memory_gib") is not None:
    note += f"; peak {r['peak_gpu_memory_gib']} GiB"
print("RESULT", "train speed (1 GPU)" if gpu else "train speed (CPU, tiny)", status,
      f"{ips:,.0f} img/s", ">= 1,500 img/s (H100-class)" if gpu else "none on a CPU", note,
      sep="\t")
EOF
}

section_evaluation() {
    "$PY" - <<'EOF'
import importlib.util, os, statistics, time

import torch

gpu = os.environ["MODE"] == "gpu"
spec = importlib.util.spec_from_file_location("bench_evaluate", "bench/evaluate.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from ibdml.metrics import evaluate  # noqa: E402

name, ks = ("SOP", (1, 10, 100, 1000)) if gpu else ("CUB", (1, 2, 4, 8))
x, labels = bench.labelled_embeddings(bench.SETS[name])  # [N, 512] unit rows, CPU
if gpu:  # a GPU run has used CUDA before it evaluates: its searches follow (device.search_device)
    torch.cuda.init()

try:  # count the faiss GPU resources objects made in this process
    import faiss
    made, real = [], getattr(faiss, "StandardGpuResources", None)
    if real is not None:
        def counted(*args, **kwargs):
            made.append(1)
            return real(*args, **kwargs)
        faiss.StandardGpuResources = counted
    faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
except ImportError:
    made, real, faiss_gpus = [], None, 0

metrics, used = bench.ours_observed(x, labels)  # warm-up, and which search path ran
seconds = []
for _ in range(3):
    start = time.perf_counter()
    result = evaluate(x, labels, ks=ks, nmi=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds.append(time.perf_counter() - start)
backend = " + ".join(dict.fromkeys(used))
median = statistics.median(seconds)
r1, map_r = result["recall_at_k"]["1"], result["map_at_r"]
note = f"N = {len(labels):,}; search: {backend}; R@1 {r1:.3f}, MAP@R {map_r:.3f}; NMI not computed"
if gpu:
    status = "PASS" if "faiss GPU" in backend else "FAILED"
    if status == "FAILED":
        note = (f"faiss-gpu not used (faiss sees {faiss_gpus} GPU(s)): install faiss-gpu as in "
                f"environment.yml; {note}")
    print("RESULT", "evaluation, SOP size", status, f"{median:.2f} s (median of 3)",
          "faiss-gpu search; seconds", note, sep="\t")
    searches = 1 + len(seconds)
    if real is None:
        print("RESULT", "faiss GPU resources", "FAILED", "-", "1 per device per process",
              "this faiss has no StandardGpuResources (faiss-cpu?)", sep="\t")
    else:
        print("RESULT", "faiss GPU resources", "PASS" if len(made) == 1 else "FAILED",
              f"{len(made)} made for {searches} searches", "1 per device per process",
              "one device; make one per device and reuse it (retrieval.py)"
              if len(made) > 1 else "one device", sep="\t")
else:
    print("RESULT", "evaluation (CPU, CUB size)", "RAN (CPU)", f"{median:.2f} s (median of 3)",
          "none on a CPU", note, sep="\t")
    print("RESULT", "faiss GPU resources", "SKIPPED", "-", "1 per device per process",
          "no GPU", sep="\t")
EOF
}

# The DDP runs: Glyphs at 227 px in the CUB shape (GPU), or the smoke set (CPU, gloo).
ddp_overrides() {
    if [ "$MODE" = gpu ]; then
        echo "-p data_root=$DATA -p image_size=227 -p backbone=resnet50 -p embedding_dim=512" \
             "-p n_c=6 -p n_s=9 -p glyph_classes=48 -p glyph_train_classes=40" \
             "-p glyph_images_per_class=${GPU_CHECK_DDP_IMAGES:-200} -p epochs=3 -p eval_every=0" \
             "-p attention_probes=0 -p nmi=false -p device=cuda"
    else
        echo "-p data_root=$DATA -p epochs=1 -p eval_every=0 -p attention_probes=0" \
             "-p nmi=false -p device=cpu"
    fi
}

last_images_per_second() {
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[-1]["images_per_second"])' \
        "$1/history.json"
}

section_ddp() {
    local g=$GPUS one many
    [ "$MODE" = gpu ] || g=2  # two gloo processes on the CPU
    # shellcheck disable=SC2046  # the overrides are words on purpose
    set -- $(ddp_overrides)
    # Render the cache with every core first (training would use 2 workers); not timed.
    "$PY" - "$@" <<'EOF'
import os, sys
from ibdml.cluster import local_cpus
from ibdml.config import load_params
from ibdml.data.glyphs import build_glyphs
p = load_params("params/smoke.yaml", [a for a in sys.argv[1:] if a != "-p"])
build_glyphs(os.path.expanduser(p.data_root), classes=p.glyph_classes,
             images_per_class=p.glyph_images_per_class, image_size=p.image_size,
             seed=p.glyph_seed, workers=local_cpus(), progress=False)
EOF
    ibdml train params/smoke.yaml "$@" --out "$WORK/ddp-1"
    one=$(last_images_per_second "$WORK/ddp-1")
    result "DDP: 1 process" MEASURED "$one img/s" "-" "the baseline; last epoch's images/s"
    if [ "$g" -eq 1 ]; then
        result "DDP: --nproc G" SKIPPED "-" "-" "only 1 GPU visible: no scaling to measure"
        return 0
    fi
    ibdml train params/smoke.yaml "$@" --nproc "$g" --out "$WORK/ddp-$g"
    many=$(last_images_per_second "$WORK/ddp-$g")
    "$PY" - "$one" "$many" "$g" <<'EOF'
import os, sys
one, many, g = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
gpu = os.environ["MODE"] == "gpu"
efficiency = many / (g * one)
what = f"{g} GPU" if gpu else f"{g} CPU processes (gloo)"
note = (f"{many:,.0f} img/s on {what} against {g} x {one:,.0f}; Glyphs epochs are short, so "
        "loader start-up weighs in" if gpu else "same cores shared: says nothing about scaling")
print("RESULT", f"DDP: --nproc {g}", "MEASURED", f"{100 * efficiency:.0f} % scaling efficiency",
      "report (none set)", note, sep="\t")
EOF
}

section_sweep() {
    local out="$WORK/sweep" space=params/search/glyphs.yaml
    local -a args
    if [ "$MODE" = gpu ]; then
        # Glyphs' space samples n_c up to 12 and n_s up to 10: a bigger set than smoke's.
        args=(--gpus-per-trial 1 -p glyph_classes=40 -p glyph_train_classes=30
              -p glyph_images_per_class=12)
    else
        space="$WORK/tiny_space.yaml"
        printf '%s\n' "val_fraction: 0.25" "epochs: 1" "lr: {loguniform: [1.0e-4, 1.0e-3]}" \
            "mpn_heads: {choice: [1, 2]}" > "$space"
        args=(--cpus-per-trial 1 -p device=cpu)
    fi
    local -a command=(params/smoke.yaml --space "$space" --trials 2 "${args[@]}"
                      -p val_fraction=0.25 -p epochs=2 -p "data_root=$DATA" --out "$out")
    local start=$SECONDS
    ibdml sweep "${command[@]}"
    local took=$((SECONDS - start))
    start=$SECONDS
    ibdml sweep "${command[@]}"  # again: resumes, nothing to train
    "$PY" - "$out" "$took" "$((SECONDS - start))" <<'EOF'
import json, sys
from pathlib import Path

out, took, again = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
s = json.loads((out / "search.json").read_text())
problems = []
chosen = s["chosen"]
if chosen is None or "test" not in chosen:
    problems.append("no chosen trial with a test evaluation")
statuses = [t["status"] for t in s["trials"]]
if len(statuses) != 2:
    problems.append(f"{len(statuses)} trials listed")
tested = sorted(t["trial"] for t in s["trials"] if (out / t["run_dir"] / "metrics.json").is_file())
if chosen is not None and tested != [chosen["trial"]]:
    problems.append(f"test evaluated for {tested or 'no trial'}, not only the chosen one")
if not (out / "best.yaml").is_file():
    problems.append("no best.yaml")
measured = (f"chosen {chosen['trial']}: val MAP@R {chosen['val']['map_at_r']:.3f}, "
            f"test R@1 {chosen['test']['recall_at_k']['1']:.3f}" if chosen else "no choice")
print("RESULT", "sweep: 2 trials", "FAILED" if problems else "PASS", measured,
      "a choice; test once, for it only",
      "; ".join(problems) or f"trials {', '.join(statuses)}; {took} s; resumed in {again} s",
      sep="\t")
EOF
}

section_resume() {
    "$PY" - <<'EOF'
import os
from pathlib import Path

import torch

import ibdml.steps.train as train_module
from ibdml.config import load_params

gpu = os.environ["MODE"] == "gpu"
work = Path(os.environ["WORK"]) / "resume"
p = load_params("params/smoke.yaml", {"data_root": os.environ["DATA"], "epochs": 2,
                                      "device": "cuda" if gpu else "cpu"})
real = train_module.train_epoch
calls = []


def interrupted(*args, **kwargs):  # stops as the second epoch starts, like a Ctrl-C
    calls.append(1)
    if len(calls) == 2:
        raise KeyboardInterrupt
    return real(*args, **kwargs)


for run in ("straight", "again"):  # "again": how far two uninterrupted runs differ
    train_module.train(p, work / run, progress=False)
train_module.train_epoch = interrupted
try:
    train_module.train(p, work / "resumed", progress=False)
except KeyboardInterrupt:
    pass
train_module.train_epoch = real
train_module.train(p, work / "resumed", progress=False)

states = {run: torch.load(work / run / "checkpoints" / "last.pt", weights_only=True)
          for run in ("straight", "again", "resumed")}


def difference(run):  # the largest weight difference from the straight run
    a, b = states["straight"]["model"], states[run]["model"]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


noise, resumed = difference("again"), difference("resumed")
cuda_states = len(states["resumed"]["rng"]["cuda"])
ok = resumed <= max(10 * noise, 1e-6) and cuda_states == (1 if gpu else 0)
print("RESULT", "resume (GPU)" if gpu else "resume (CPU)", "PASS" if ok else "FAILED",
      f"max |dw| {resumed:.3g} resumed, {noise:.3g} run to run",
      "resumed within 10x run-to-run noise", f"{cuda_states} CUDA generator state(s) in the "
      "checkpoint" + ("" if gpu else "; CPU: both differences should be 0"), sep="\t")
EOF
}

# --- the runner ---------------------------------------------------------------------------------

# run_section NAME LIMIT: `--section NAME` in its own process under timeout, within the budget;
# its RESULT lines go to the table, and a non-zero exit adds a FAILED row with the reason.
run_section() {
    local name=$1 limit=$2 rc=0 left log
    left=$((BUDGET - SECONDS - 10))  # 10 s kept for the table
    if [ "$left" -lt 20 ]; then
        result "$name" SKIPPED "-" "-" "no time left in the ${BUDGET} s budget" >> "$RESULTS"
        return 0
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    log="$WORK/$name.log"
    echo "[$((SECONDS))s] $name (at most ${limit} s; log $log)"
    timeout --kill-after=10 "$limit" bash "$ROOT/bench/gpu_check.sh" --section "$name" \
        > "$log" 2>&1 || rc=$?
    grep "^RESULT$TAB" "$log" >> "$RESULTS" || true
    if [ "$rc" -ne 0 ]; then
        local why
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            why="timed out after ${limit} s"
        else
            why="exit $rc: $(grep -v "^RESULT$TAB" "$log" | grep -v '^[[:space:]]*$' | tail -n 1 \
                | cut -c1-160)"
        fi
        result "$name" FAILED "-" "-" "$why" >> "$RESULTS"
        FAILURES=$((FAILURES + 1))
    fi
}

print_table() {
    "$PY" - "$RESULTS" <<'EOF'
import sys

rows = [line.rstrip("\n").split("\t")[1:] for line in open(sys.argv[1]) if line.strip()]
head = ["section", "status", "measured", "target", "note"]
rows = [r + [""] * (5 - len(r)) for r in rows]
widths = [max(len(r[i]) for r in [head] + rows) for i in range(4)]
def line(r):
    return "| " + " | ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + f" | {r[4]} |"
print(line(head))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
for r in rows:
    print(line(r))
EOF
}

if [ "${1:-}" = "--section" ]; then
    "section_$2"
    exit 0
fi

export BUDGET="${GPU_CHECK_BUDGET:-570}"
export DATA="${GPU_CHECK_DATA:-$HOME/.cache/ibdml/glyphs}"
if [ ! -x "$PY" ]; then
    echo "gpu_check: no Python at $PY: run \`make setup\` first, or set PYTHON" >&2
    exit 2
fi
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())') || {
    echo "gpu_check: $PY cannot import torch: run \`make setup\` first" >&2
    exit 2
}
export GPUS
if [ "$GPUS" -gt 0 ]; then
    export MODE=gpu
elif [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
    export MODE=cpu
else
    torch_build=$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')
    cat >&2 <<EOF
gpu_check: torch sees no CUDA GPU (torch $torch_build).
This check is for a machine with GPUs, with a CUDA build of torch and faiss-gpu installed as in
environment.yml. To test the script itself on a CPU (tiny versions, numbers meaningless):
    GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh
EOF
    exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ibdml-gpu-check.XXXXXX")"
export WORK RESULTS="$WORK/results.tsv"
: > "$RESULTS"
FAILURES=0

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
echo "ibdml GPU check at $commit ($MODE mode, budget ${BUDGET} s)"
"$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
for i in range(torch.cuda.device_count()):
    cc = torch.cuda.get_device_capability(i)
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}, compute capability {cc[0]}.{cc[1]}")
try:
    import faiss
    print(f"faiss {faiss.__version__}, sees {faiss.get_num_gpus()} GPU(s)")
except ImportError:
    print("faiss not installed")
try:
    import ray
    print(f"ray {ray.__version__}")
except ImportError:
    print("ray not installed")
EOF
if [ "$MODE" = cpu ]; then
    echo "no GPU: GPU_CHECK_ALLOW_CPU=1, tiny CPU versions (their numbers mean nothing)"
fi

run_section bf16 20
run_section train_speed 80
run_section evaluation 70
run_section ddp 180
run_section sweep 150
run_section resume 90

echo
echo "Summary ($((SECONDS)) s):"
print_table
if [ "$FAILURES" -gt 0 ] || [ "${GPU_CHECK_KEEP:-0}" = 1 ] \
        || grep -q "${TAB}FAILED$TAB" "$RESULTS"; then
    echo "logs and run folders kept in $WORK"
else
    rm -rf "$WORK"
fi

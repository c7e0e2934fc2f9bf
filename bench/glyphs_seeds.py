"""Glyphs: the CE-only baseline and the MPN-trained backbone over several seeds, same budget,
against raw-pixel k-NN and the untrained network. Prints a markdown table (mean ± std) and writes
the per-run numbers to <out>/summary.json. The runs are the claims study's (ibdml.steps.claims,
every variant): Ray tasks, in parallel on this machine's cores, resumed when run again; by default
in the claims study's own folder, so after `make claims` nothing is trained again.

    .venv/bin/python bench/glyphs_seeds.py [--seeds 0 1 2 3 4] [--out outputs/claims] [-p key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ibdml.config import parse_override
from ibdml.steps.claims import run_claims, run_dir_of

ROWS = [("raw-pixel k-NN", "raw_pixels"), ("untrained backbone", "untrained"),
        ("CE-only backbone (`mpn_layers: 0`)", "ce"), ("MPN-trained backbone", "mpn")]


def run_all(params_file: str, seeds: list[int], out: Path, overrides: list[str]) -> dict:
    run_claims(params_file, out, seeds, dict(parse_override(o) for o in overrides))
    results: dict[str, list[dict]] = {key: [] for _, key in ROWS}
    for seed in seeds:
        for variant in ("ce", "mpn"):
            m = json.loads((run_dir_of(out, variant, seed) / "metrics.json").read_text())
            results[variant].append(m)
            if variant == "mpn":  # baselines depend on the seed only through the initialisation
                results["raw_pixels"].append(m["baselines"]["raw_pixels"])
                results["untrained"].append(m["baselines"]["untrained"])
    return results


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(results: dict) -> str:
    lines = ["| features | R@1 | MAP@R | NMI |", "|---|---|---|---|"]
    for label, key in ROWS:
        runs = results[key]
        lines.append(f"| {label} | {fmt([r['recall_at_k']['1'] for r in runs])} | "
                     f"{fmt([r['map_at_r'] for r in runs])} | {fmt([r['nmi'] for r in runs])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/glyphs.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="outputs/claims")
    ap.add_argument("-p", dest="override", action="append", default=[])
    args = ap.parse_args()
    results = run_all(args.params, args.seeds, Path(args.out), args.override)
    Path(args.out, "summary.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()

"""Verdicts from intervals: a paired difference is *supported* when its 95 % interval lies above 0,
*contradicted* when it lies below 0, and *inconclusive* when it touches or straddles 0
(docs/protocol.md, "Evidence"). Pure functions on plain numbers.

Over several seeds the interval is a t-interval over the per-seed paired differences (n − 1
degrees of freedom): it speaks for runs trained with other seeds. With one seed there is nothing to
spread over; the caller passes a paired bootstrap over the test queries instead
(uncertainty.paired_bootstrap_difference), which speaks only for other test queries of the same
trained models.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
LEVEL = 0.95


def mean_std(values: Sequence[float]) -> dict:
    """{mean, std (sample, 0 for one value), n, values}."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def t_interval(differences: Sequence[float], level: float = LEVEL) -> dict:
    """The t-interval of the mean of paired differences (at least two).

    Returns {difference (the mean), low, high, level, n, method}. Identical differences give a
    zero-width interval at their value.

        >>> i = t_interval([0.01, 0.03])  # mean 0.02, sd 0.0141, t(0.975, 1) = 12.71
        >>> round(i["low"], 4), round(i["high"], 4)
        (-0.1071, 0.1471)
    """
    from scipy.stats import t  # lazy: scipy costs ~0.5 s to import

    d = [float(x) for x in differences]
    if len(d) < 2:
        raise ValueError(f"a t-interval needs at least two paired differences, got {len(d)}; "
                         "with one seed use a paired bootstrap over the test queries")
    if not all(math.isfinite(x) for x in d):
        raise ValueError(f"paired differences must be finite, got {d}")
    mean = statistics.fmean(d)
    half = float(t.ppf((1 + level) / 2, len(d) - 1)) * statistics.stdev(d) / math.sqrt(len(d))
    return {"difference": mean, "low": mean - half, "high": mean + half, "level": level,
            "n": len(d), "method": f"t-interval over {len(d)} seeds ({len(d) - 1} degrees of "
                                   "freedom)"}


def verdict(interval: dict) -> str:
    """supported (low > 0), contradicted (high < 0) or inconclusive (the interval touches or
    straddles 0, or there is none: low and high None).

        >>> verdict({"low": 0.01, "high": 0.05}), verdict({"low": -0.02, "high": 0.03})
        ('supported', 'inconclusive')
    """
    if interval["low"] is None:
        return INCONCLUSIVE
    if interval["low"] > 0:
        return SUPPORTED
    return CONTRADICTED if interval["high"] < 0 else INCONCLUSIVE


def paired_comparison(a: Sequence[float], b: Sequence[float],
                      bootstrap: dict | None = None) -> dict:
    """Side a and side b over the same seeds, the per-seed differences b − a, their interval and
    verdict, and how many seeds fall each way.

    Args:
        a, b: one value per seed, in the same seed order (equal lengths ≥ 1).
        bootstrap: with one seed, the paired bootstrap interval over queries ({low, high, ...});
            ignored with two seeds or more (the t-interval over seeds is used). One seed and no
            bootstrap: no interval (low and high None), so the verdict is inconclusive.

    Returns:
        {a, b, difference: mean_std of b − a, interval, verdict, seeds_higher, seeds_lower}.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need one per seed on both sides, got {len(a)} and "
                         f"{len(b)}")
    d = [y - x for x, y in zip(a, b)]
    if len(d) > 1:
        interval = t_interval(d)
    elif bootstrap is not None:
        interval = {**bootstrap, "difference": d[0]}
    else:
        interval = {"difference": d[0], "low": None, "high": None, "level": LEVEL, "n": 1,
                    "method": "one seed and nothing to resample: no interval"}
    return {"a": mean_std(a), "b": mean_std(b), "difference": mean_std(d), "interval": interval,
            "verdict": verdict(interval), "seeds_higher": sum(x > 0 for x in d),
            "seeds_lower": sum(x < 0 for x in d)}


def verdict_cell(c: dict) -> str:
    """'**supported** (5 of 5 higher)' from a paired_comparison."""
    n = c["difference"]["n"]
    lower = f", {c['seeds_lower']} lower" if c["seeds_lower"] else ""
    return f"**{c['verdict']}** ({c['seeds_higher']} of {n} higher{lower})"


def spread_cell(x: dict, digits: int = 3) -> str:
    """'0.852 ± 0.007' (mean ± sd over seeds) from a mean_std; the mean alone for one value."""
    return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}" if x["n"] > 1 else \
        f"{x['mean']:.{digits}f}"


def interval_cell(interval: dict, digits: int = 3) -> str:
    """'+0.012 [−0.004, +0.028]' (or '+0.012 [no interval]')."""
    if interval["low"] is None:
        return f"{interval['difference']:+.{digits}f} [no interval]"
    return (f"{interval['difference']:+.{digits}f} [{interval['low']:+.{digits}f}, "
            f"{interval['high']:+.{digits}f}]")

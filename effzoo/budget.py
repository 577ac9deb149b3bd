"""The accuracy budgets, in one place.

Two budgets, two names:
  * the deploy budget (`deploy: min_agreement, max_top1_loss`): a build may be deployed, or named the fastest
    build of a variant, only when its top-1 agreement with the fp32 build on the evaluated set is at least
    `min_agreement` and its top-1 loss at most `max_top1_loss` (fp32 itself always qualifies);
  * the split budget of an int8 build (quant mode option `split_min_agreement`): the agreement with the fp32
    model on the calibration source's validation split that its layer-promotion search must reach
    (effzoo.int8_search); metrics records the search's outcome with `split_search_record`.
"""
from __future__ import annotations

import math

# What metrics keeps of an int8 build's split search (build.json details.accuracy_budget).
SPLIT_SEARCH_KEYS = ("split_min_agreement", "signal", "status", "why", "final_agreement", "final_expected_agreement",
                     "final_kl", "agreement_lower_95", "split_images", "split_images_needed", "promoted_macs_fraction",
                     "speed_over_fp32_on_split", "slower_than_fp32", "search_s")
# A split smaller than this says nothing about a budget near 99%: the search does not run on it (not_checked).
MIN_SPLIT_IMAGES = 50


def split_sizes(available: int, images: int, validation: int) -> tuple[int, int]:
    """(range images, validation images) from a source of `available` images; when it holds fewer than both
    counts, the split gets its proportional share but at most half of the source (the ranges come first)."""
    if available >= images + validation:
        return images, validation
    val = min(round(available * validation / (images + validation)), available // 2)
    return min(images, available - val), val
Z95 = 1.959963984540054   # the two-sided 95% normal quantile of the Wilson interval


def wilson_lower(agreeing: int, n: int, z: float = Z95) -> float:
    """Lower end of the Wilson score interval (95%) of an agreement of `agreeing` out of `n` images."""
    if n <= 0:
        return 0.0
    p = agreeing / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def images_to_certify(agreement: float, target: float, z: float = Z95) -> int | None:
    """The smallest split at which an observed `agreement` would certify `target` (Wilson lower bound >= target);
    None when the agreement itself is not above the target (no split size certifies it)."""
    if agreement <= target:
        return None
    hi = 1
    while wilson_lower(agreement * hi, hi, z) < target:
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if wilson_lower(agreement * mid, mid, z) >= target else (mid, hi)
    return hi


def certify(agreeing: int, n: int, target: float) -> dict:
    """The split budget's status from a split result that met the target as a point estimate: `met` only when the
    Wilson 95% lower bound reaches the target, else `not_certified` with the split size that would certify it."""
    lower = wilson_lower(agreeing, n)
    out = {"agreement_lower_95": round(lower, 6)}
    if lower >= target:
        return {**out, "status": "met"}
    return {**out, "status": "not_certified", "split_images_needed": images_to_certify(agreeing / n, target)}


def split_search_record(search: dict) -> dict:
    """What metrics records of an int8 build's split search: its budget, outcome and promoted layers."""
    return {**{k: search.get(k) for k in SPLIT_SEARCH_KEYS}, "promoted_layers": len(search["promoted"])}


def within_budget(q: str, results: dict, budget: dict) -> bool:
    """Whether a build keeps the accuracy budget against the fp32 build: top-1 agreement >= min_agreement and a
    top-1 loss of at most max_top1_loss (fp32 itself always does)."""
    r, ref = results[q], results.get("fp32")
    if q == "fp32":
        return True
    agree = r.get("top1_agreement_with_fp32")
    return (ref is not None and agree is not None and agree >= budget["min_agreement"]
            and ref["top1"] - r["top1"] <= budget["max_top1_loss"] + 1e-12)


def speed_range(r: dict) -> tuple[float, float]:
    """A build's speed over PyTorch eager in the deploy mode, as the spread of its per-round ratios (its noise)."""
    s = r["speed"]
    lo, hi = s.get("vs_torch_eager_range") or (s["vs_torch_eager"], s["vs_torch_eager"])
    return lo, hi


def pick_fastest(results: dict, modes: list[str], tolerance: float = 0.0) -> tuple[str, list[str]]:
    """(the fastest of these benchmarked modes, the modes tied with it). Speed is the deploy mode's speed over
    PyTorch eager, timed beside PyTorch in each build's own job. Builds within the measured noise of the fastest are
    ties: their round-to-round ranges overlap its range, or their speed is within `tolerance` of it (the noise
    between benchmark jobs, which the rounds of one job do not see). A tie goes to the higher agreement with fp32,
    then the higher top-1, then the earlier mode in `modes` (run_quant order): never to noise."""
    speed = {q: results[q]["speed"]["vs_torch_eager"] for q in modes}
    fastest = max(modes, key=speed.get)
    best_lo, best_hi = speed_range(results[fastest])
    tied = [q for q in modes if speed[q] * (1 + tolerance) >= speed[fastest]
            or (speed_range(results[q])[1] >= best_lo and speed_range(results[q])[0] <= best_hi)]
    winner = max(tied, key=lambda q: (results[q].get("top1_agreement_with_fp32", 1.0), results[q]["top1"],
                                      -modes.index(q)))
    return winner, [q for q in tied if q != winner]


def fastest_build(results: dict, budget: dict, order: list[str] | None = None) -> tuple[str, list[str]] | None:
    """(the fastest build within the accuracy budget, the builds tied with it: pick_fastest, ties broken in `order`,
    run_quant's); None when no build within it was benchmarked."""
    modes = [q for q in (order or list(results)) if q in results and results[q].get("speed")
             and within_budget(q, results, budget)]
    return pick_fastest(results, modes, budget.get("speed_tolerance", 0.0)) if modes else None


def is_runtime_reference(r: dict) -> bool:
    """Whether a build is the fp32 build of its own runtime (the reference of that runtime's speed ratios)."""
    return r.get("kind") == "fp32" and "runtime_fp32" not in r


def speed_over_fp32(r: dict) -> float | None:
    """A build's speed over the fp32 build of its own runtime (over the reference fp32 where its runtime has none),
    both as speeds over PyTorch eager in the deploy mode; 1.0 for a runtime's own fp32 build."""
    if is_runtime_reference(r):
        return 1.0 if r.get("speed") else None
    return r.get("speedup_vs_runtime_fp32" if "runtime_fp32" in r else "speedup_vs_fp32")


def slower_than_fp32(metrics: list[dict]) -> list[str]:
    """'variant mode (0.81x)' for every build the benchmark measured no faster than the fp32 build of its own
    runtime (of the reference fp32 build where its runtime has none)."""
    return [f"{m['variant']} {q} ({speed_over_fp32(r):.2f}x{slow_reason(r)})" for m in metrics
            for q, r in m["results"].items()
            if not is_runtime_reference(r) and speed_over_fp32(r) is not None and speed_over_fp32(r) <= 1.0]


def slow_reason(r: dict) -> str:
    """Why an int8 build may be slow, from its split search: its promotions, or the build's own finding that it
    is slower than fp32 on the split."""
    b = r.get("accuracy_budget") or {}
    if b.get("slower_than_fp32"):
        return f"; the build measured {b['slower_than_fp32']}"
    if b.get("promoted_layers"):
        return f"; {b['promoted_layers']} layers promoted, {100 * b.get('promoted_macs_fraction', 0):.0f}% of the MACs"
    return ""


def split_budget_notes(metrics: list[dict]) -> list[str]:
    """One line per int8 build whose split budget is not `met`: cap reached, not certified (with the split size that
    would certify it) or not checked (with why)."""
    out = []
    for m in metrics:
        for q, r in m["results"].items():
            b = r.get("accuracy_budget")
            if not b or b["status"] == "met":
                continue
            name = f"{m['variant']} {q}"
            expected = (f", expected {b['final_expected_agreement']:.3f}"
                        if b.get("final_expected_agreement") is not None else "")
            if b["status"] == "cap_reached":
                out.append(f"{name}: split budget not met within the promotion cap ({b['final_agreement']:.3f}"
                           f"{expected} on {b['split_images']} split images" + (f"; {b['why']}" if b.get("why")
                                                                                  else "") + ")")
            elif b["status"] == "speed_bound":
                out.append(f"{name}: promotions held back by the speed floor ({b['why']}; {b['final_agreement']:.3f}"
                           f"{expected} on {b['split_images']} split images)")
            elif b["status"] == "not_certified":
                needed = b.get("split_images_needed")
                out.append(f"{name}: split agreement {b['final_agreement']:.3f} on {b['split_images']} images does "
                           f"not certify {b['split_min_agreement']} (95% lower bound {b['agreement_lower_95']:.3f}; "
                           + (f"{needed} split images would)" if needed else "no split size would)"))
            else:
                out.append(f"{name}: split budget not checked ({b.get('why')})")
    return out

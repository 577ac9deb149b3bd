"""The split budget of an int8 build.

The split budget (quant mode option `split_min_agreement`) is the agreement with the fp32 model on the calibration
source's validation split that the build's layer-promotion search must reach (effzoo.int8_search). Its pass rule
is the point signal; whether the split can certify it uses the exact bounds of effzoo.evidence, in the same words
as the deploy budget (certified, unproven). The deploy budget is effzoo.evidence's and effzoo.decision's. metrics
records the search's outcome with `split_search_record`.
"""
from __future__ import annotations

from effzoo.evidence import clopper_pearson, smallest_n

# What metrics keeps of an int8 build's split search (build.json details.accuracy_budget).
SPLIT_SEARCH_KEYS = ("split_min_agreement", "signal", "status", "why", "final_agreement", "final_expected_agreement",
                     "final_kl", "agreement_lower_95", "split_images", "split_images_needed", "promoted_macs_fraction")
# ... and of what it measured (build.json details.accuracy_budget.measured), which decided nothing
SPLIT_MEASURED_KEYS = ("split_speed_over_runtime_fp32", "note", "search_s")
# A split smaller than this says nothing about a budget near 99%: the search does not run on it (not_checked).
MIN_SPLIT_IMAGES = 50


def lower_bound(agreeing: int, n: int) -> float:
    """The exact (Clopper-Pearson) 95% lower bound of an agreement of `agreeing` out of `n` images."""
    return clopper_pearson(agreeing, n)[0]


def images_to_certify(agreement: float, target: float) -> int | None:
    """The smallest split at which an observed `agreement` would certify `target` (its exact 95% lower bound reaches
    it); None when the agreement itself is not above the target (no split size certifies it)."""
    if agreement <= target:
        return None
    return smallest_n(lambda n: clopper_pearson(agreement * n, n)[0] >= target)


def certify(agreeing: int, n: int, target: float) -> dict:
    """The split budget's state from a split result that met the target as a point estimate: `certified` only when
    the exact 95% lower bound reaches the target, else `unproven` with the split size that would certify it."""
    lower = lower_bound(agreeing, n)
    out = {"agreement_lower_95": round(lower, 6)}
    if lower >= target:
        return {**out, "status": "certified"}
    return {**out, "status": "unproven", "split_images_needed": images_to_certify(agreeing / n, target)}


def split_search_record(search: dict) -> dict:
    """What metrics records of an int8 build's split search: its budget, outcome and promoted layers, and what the
    search measured."""
    measured = search.get("measured", {})
    return {**{k: search.get(k) for k in SPLIT_SEARCH_KEYS}, "promoted_layers": len(search["promoted"]),
            "measured": {k: measured[k] for k in SPLIT_MEASURED_KEYS if k in measured}}


def split_budget_notes(metrics: list[dict]) -> list[str]:
    """One line per int8 build whose split budget is not `certified`: cap reached, unproven (with the split size that
    would certify it) or not checked (with why)."""
    out = []
    for m in metrics:
        for q, r in m["results"].items():
            b = r.get("accuracy_budget")
            if not b or b["status"] == "certified":
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
            elif b["status"] == "unproven":
                needed = b.get("split_images_needed")
                out.append(f"{name}: split agreement {b['final_agreement']:.3f} on {b['split_images']} images does "
                           f"not certify {b['split_min_agreement']} (95% lower bound {b['agreement_lower_95']:.3f}; "
                           + (f"{needed} split images would)" if needed else "no split size would)"))
            else:
                out.append(f"{name}: split budget not checked ({b.get('why')})")
    return out

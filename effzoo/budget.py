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

# What metrics keeps of an int8 build's split search (build.json details.accuracy_budget).
SPLIT_SEARCH_KEYS = ("split_min_agreement", "status", "final_agreement", "split_images", "promoted_macs_fraction",
                     "search_s")


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


def fastest_build(results: dict, budget: dict) -> tuple[str, float] | None:
    """The quant mode with the highest measured throughput among those within the accuracy budget; None when no
    mode was benchmarked."""
    ok = {q: r["best_throughput_ips"] for q, r in results.items() if r.get("best_throughput_ips")
          and within_budget(q, results, budget)}
    if not ok:
        return None
    q = max(ok, key=ok.get)
    return q, ok[q]


def slower_than_fp32(metrics: list[dict]) -> list[str]:
    """'variant mode (0.81x)' for every build the benchmark measured no faster than the fp32 build of its own
    runtime (of the reference fp32 build where its runtime has none)."""
    out = []
    for m in metrics:
        for q, r in m["results"].items():
            if "runtime_fp32" in r:
                speed = r.get("speedup_vs_runtime_fp32")
            else:  # a runtime's own fp32 build is its reference, not slower than itself
                speed = None if r.get("kind") == "fp32" else r.get("speedup_vs_fp32")
            if speed is not None and speed <= 1.0:
                out.append(f"{m['variant']} {q} ({speed:.2f}x)")
    return out


def budget_not_met(metrics: list[dict]) -> list[str]:
    """'variant mode (0.982 on 100)' for every int8 build whose accuracy budget search reached its cap."""
    return [f"{m['variant']} {q} ({r['accuracy_budget']['final_agreement']:.3f} on "
            f"{r['accuracy_budget']['split_images']} split images)"
            for m in metrics for q, r in m["results"].items()
            if r.get("accuracy_budget", {}).get("status") == "cap_reached"]

"""The int8 accuracy-budget search: which layers an int8 build promotes out of int8, chosen from the validation
split's logits and the priced promotion costs only, so that a build depends on its inputs and not on how busy the
machine was.

An int8 build starts from its CPU policy's weights (plain 8-bit for a vnni target; 7-bit in the saturating GEMM
layers otherwise) and is checked against `split_min_agreement` on the validation split of the calibration source
(calibrate.py: seeded, class-balanced, disjoint from the range images). Promotions:
  * to exact uint8 weights (ONNX Runtime's exact u8u8 kernel): a saturating GEMM layer of an ONNX Runtime build
    for a target without VNNI;
  * to float (weights left unquantized) otherwise: on a vnni target, for depthwise layers, and on OpenVINO, which
    has no exact uint8 kernel.
The parts: the graph edits (effzoo.qdq_graph), the probes of the float model (effzoo.int8_probes: GPTQ rounding,
weight noise, bias correction's shift), the trials on the split (effzoo.int8_trials), and this policy:
  * rank: per layer, the output noise its promotion removes per predicted slowdown (the measured promotion costs
    of the kernel ISA the build runs on, or the nearest measured one: effzoo.promotion_costs);
  * schedule: 1, 2, 4, ... layers of the ranking, then bisection down to the smallest prefix whose trial passes,
    capped at `max_promoted_macs` of the quantized MACs; when none passes, the fewest promotions that remove most
    of the split KL the trials could remove (none when that is too little to measure);
  * speed floor, priced: the prefix is cut back until the cost table's int8 speed over fp32, less the predicted
    slowdown of the promotions, stays at `min_speed_over_fp32` or above (`speed_bound`).
Where the build runs on its own kernels, the chosen graph is then timed against the fp32 model on the split; that
figure, and every trial's seconds, are measurements recorded under `measured` that decide nothing.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import onnx
from effzoo import promotion_costs
from effzoo.budget import MIN_SPLIT_IMAGES, certify, lower_bound
from effzoo.build_options import BuildOptions
from effzoo.common import LOG, ZooError
from effzoo.cpu_target import kernel_isa
from effzoo.int8_probes import rounded_by_output_error, weight_noise
from effzoo.int8_trials import Trials, measured_speed, split_logits, trial_runner
from effzoo.qdq_graph import Layer, bias_corrected, float_deltas, has_weight_dq


def promotion_slowdown(layer: Layer, kind: str, runtime: str, total_macs: int, costs: dict) -> float:
    """The predicted slowdown (fraction of the int8 graph's time) of promoting one layer; costs: an entry of
    effzoo.promotion_costs.for_isa."""
    key = f"{kind}_{'dense' if layer.saturating else 'depthwise'}"
    per_share = costs["slowdown_per_mac_share"].get(runtime, {})
    if key not in per_share:
        raise ZooError(f"{promotion_costs.COST_FILE}: no {key} cost measured for {runtime} on "
                       f"{costs['priced_with']} kernels")
    return per_share[key] * layer.macs / max(total_macs, 1)


def promotion_kind(layer: Layer, policy: str, runtime: str) -> str:
    """'exact_uint8' for a saturating layer of an ONNX Runtime build with 7-bit weights there, else 'float'."""
    return "exact_uint8" if policy == "saturating" and runtime == "onnxruntime" and layer.saturating else "float"


USEFUL_SHARE = 0.8       # a prefix that removes this share of the KL the trials could remove is enough
MEASURABLE_KL_CUT = 0.1  # below this relative cut of the split KL, promotions bought nothing measurable


def useful_prefix(trials: dict[int, dict]) -> tuple[int, str]:
    """When no prefix meets the budget: the fewest promotions that remove most of the split KL the trials could
    remove (USEFUL_SHARE), or none when the best of them cuts it by less than MEASURABLE_KL_CUT; and why."""
    kl = {p: t["kl"] for p, t in trials.items() if "kl" in t}
    best = min(kl, key=lambda p: (kl[p], p))
    cut = kl[0] - kl[best]
    if kl[0] <= 0 or cut < MEASURABLE_KL_CUT * kl[0]:
        return 0, (f"no prefix met the budget, and promotions cut the split KL by {100 * cut / max(kl[0], 1e-12):.0f}% "
                   f"at most ({kl[0]:.5f} -> {kl[best]:.5f}): none kept, they would cost speed for no measurable "
                   f"gain")
    chosen = min(p for p in kl if kl[0] - kl[p] >= USEFUL_SHARE * cut)
    return chosen, (f"no prefix met the budget; {chosen} promoted layers remove "
                    f"{100 * (kl[0] - kl[chosen]) / kl[0]:.0f}% of the split KL ({kl[0]:.5f} -> {kl[chosen]:.5f}; "
                    f"the best trial, {best} layers, {kl[best]:.5f})")


def capped(ranking: list[tuple[Layer, str, float]], cap_macs: float) -> list[tuple[Layer, str, float]]:
    """The ranking with every layer that would take the promoted MACs past `cap_macs` left out."""
    out, used = [], 0
    for entry in ranking:
        if used + entry[0].macs <= cap_macs:
            out.append(entry)
            used += entry[0].macs
    return out


def schedule_search(trial, n: int) -> tuple[int, dict[int, dict]]:
    """Smallest prefix p of n ranked layers whose trial passes: p = 0, then 1, 2, 4, ... n, then bisection
    between the last failing and the first passing prefix. Returns (p, trials) with p = -1 when none passes."""
    trials: dict[int, dict] = {}

    def passes(p: int) -> bool:
        if p not in trials:
            trials[p] = trial(p)
        return trials[p]["passed"]

    if passes(0):
        return 0, trials
    lo, hi = 0, None
    p = 1
    while p <= n:
        if passes(p):
            hi = p
            break
        lo = p
        if p == n:
            break
        p = min(2 * p, n)
    if hi is None:
        return -1, trials
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi, trials


def floor_prefix(chosen: int, slowdowns: list[float], int8_speed: float, floor: float) -> int:
    """The most promotions, at most `chosen`, whose priced speed over fp32 (int8_speed / (1 + their predicted
    slowdown)) stays at `floor` or above; 0 when none does."""
    total = float(np.sum(slowdowns[:chosen]))
    p = chosen
    while p > 0 and int8_speed / (1 + total) < floor:
        p -= 1
        total -= slowdowns[p]
    return p


@dataclass
class Prepared:
    """The graphs a search starts from (rounded, bias-corrected), the quantized layers and each one's noise."""
    base: onnx.ModelProto
    exact: onnx.ModelProto | None
    quantized: list
    kinds: dict
    scores: dict
    records: dict
    seconds: dict


@dataclass
class SearchRecord:
    """What the search decided (build.json details.accuracy_budget) and, under `measured`, what it timed."""
    split_min_agreement: float
    max_promoted_macs: float
    status: str = "not_checked"
    why: str | None = None
    split_images: int = 0
    promoted: list = field(default_factory=list)
    weight_rounding: dict = field(default_factory=dict)
    bias_correction: dict | None = None
    agreement_lower_95: float | None = None
    split_images_needed: int | None = None
    disagreements_allowed: int | None = None
    signal: str | None = None
    trials_run_as: str | None = None
    ranking: dict | None = None
    promotion_costs: dict | None = None
    speed_floor: dict | None = None
    predicted_slowdown: float | None = None
    cap_macs: int | None = None
    quantized_layer_macs: int | None = None
    steps: list = field(default_factory=list)
    promoted_macs_fraction: float | None = None
    final_agreement: float | None = None
    final_expected_agreement: float | None = None
    final_kl: float | None = None
    final_logit_mse: float | None = None
    measured: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        """The record as build.json holds it (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def prepare(base: onnx.ModelProto, exact: onnx.ModelProto | None, prepped: onnx.ModelProto, layers: list[Layer],
            policy: str, runtime: str, rank_images: np.ndarray, rounding_images: np.ndarray | None,
            options: BuildOptions, threads: int) -> Prepared:
    """GPTQ rounding (option weight_rounding), the weight noise of every quantized layer on `rank_images`, and
    bias correction (option bias_correction)."""
    if len(rank_images) == 0:
        raise ZooError("calibration.json lists no range images: nothing to measure the weight noise on")
    producer = {o: n for n in base.graph.node for o in n.output}
    quantized = [la for la in layers if has_weight_dq(base, la.name, producer)]
    kinds = {la.name: promotion_kind(la, policy, runtime) for la in quantized}
    to_exact = [la for la in quantized if kinds[la.name] == "exact_uint8"]
    records, seconds = {"weight_rounding": {"method": "nearest"}}, {}
    if options.weight_rounding == "gptq":
        base, exact, records["weight_rounding"], seconds = rounded_by_output_error(
            base, exact, prepped, quantized, to_exact, policy,
            rank_images if rounding_images is None else rounding_images, threads)
    t = time.monotonic()
    noise = weight_noise(prepped, float_deltas(base, prepped, quantized), rank_images, threads)
    exact_noise = weight_noise(prepped, float_deltas(exact, prepped, to_exact), rank_images, threads)
    seconds["rank_s"] = round(time.monotonic() - t, 2)
    if options.bias_correction:
        base, records["bias_correction"] = bias_corrected(base, {n: v[1] for n, v in noise.items()})
        records["bias_correction"]["images"] = len(rank_images)
        if exact is not None:
            exact, _ = bias_corrected(exact, {n: v[1] for n, v in exact_noise.items()})
    # what a promotion removes: the layer's weight noise, less what is left with exact uint8 weights
    scores = {la.name: noise[la.name][0] - (exact_noise[la.name][0] if la.name in exact_noise else 0.0)
              for la in quantized}
    return Prepared(base, exact, quantized, kinds, scores, records, seconds)


def not_checked_why(split_size: int, budget: float) -> str | None:
    """Why the split cannot check a budget, or None when it can."""
    if budget <= 0:
        return "split_min_agreement is 0"
    if split_size == 0:
        return "the calibration source has no validation split"
    if split_size < MIN_SPLIT_IMAGES:
        return (f"the validation split has {split_size} images, fewer than the {MIN_SPLIT_IMAGES} a budget needs "
                f"(calibration.validation_images, and a larger calibration source)")
    return None


def ranked(prep: Prepared, runtime: str, options: BuildOptions, costs: dict):
    """(ranking, the capped order the search promotes in, predicted slowdown per layer, quantized MACs): accuracy
    gained per predicted slowdown, best first (on ONNX Runtime a float depthwise layer costs over 10x what a float
    dense layer of the same MACs does)."""
    total_macs = sum(la.macs for la in prep.quantized)
    slowdown = {la.name: promotion_slowdown(la, prep.kinds[la.name], runtime, total_macs, costs)
                for la in prep.quantized}
    ranking = sorted(((la, prep.kinds[la.name], prep.scores[la.name]) for la in prep.quantized),
                     key=lambda e: -e[2] / max(slowdown[e[0].name], 1e-9))
    return ranking, capped(ranking, options.max_promoted_macs * total_macs), slowdown, total_macs


def chosen_prefix(trials: Trials, n: int, signal: str) -> tuple[int, bool, str | None]:
    """(prefix, whether it passed, why it was kept when none passed) by schedule_search and useful_prefix."""
    chosen, _ = schedule_search(trials, n)
    if chosen >= 0:
        return chosen, True, None
    if signal == "expected_agreement":
        p, why = useful_prefix(trials.results)
        return p, False, why
    return n, False, None   # the most the cap allows


def speed_floor(chosen: int, order: list, slowdown: dict, priced: float, options: BuildOptions
                ) -> tuple[int, dict, str | None]:
    """(promotions kept under the priced speed floor, the floor's record, why it held promotions back or None)."""
    floor = float(options.min_speed_over_fp32)
    kept = floor_prefix(chosen, [slowdown[la.name] for la, _, _ in order], priced, floor)
    predicted = priced / (1 + sum(slowdown[la.name] for la, _, _ in order[:kept]))
    record = {"min_speed_over_fp32": floor, "int8_speed_over_runtime_fp32": priced,
              "predicted_speed_over_runtime_fp32": round(predicted, 4)}
    if kept == chosen:
        return kept, record, None
    wanted = priced / (1 + sum(slowdown[la.name] for la, _, _ in order[:chosen]))
    return kept, record, (f"{chosen} promoted layers would run at {wanted:.2f}x the fp32 model by the priced "
                          f"costs (floor min_speed_over_fp32 {floor}); kept {kept}")


def settle_status(rec: SearchRecord, final: dict, held_back: str | None, signal: str) -> None:
    """The budget's status from the final trial: speed_bound (the priced floor held promotions back), certified or
    unproven (met as a point estimate; certified only as far as the split allows), or cap_reached."""
    n = rec.split_images
    agreeing = n - final["disagreements"]
    met = final["passed"] if signal == "expected_agreement" else final["disagreements"] <= rec.disagreements_allowed
    rec.agreement_lower_95 = round(lower_bound(agreeing, n), 6)
    if held_back:
        rec.status, rec.why = "speed_bound", held_back
        LOG.warning("int8 promotions held back by the speed floor: %s", held_back)
    elif met:
        cert = certify(agreeing, n, rec.split_min_agreement)
        rec.status, rec.split_images_needed = cert["status"], cert.get("split_images_needed")
        if rec.status == "unproven":
            LOG.warning("int8 split budget %.3f met on %d split images (agreement %.4f) but not certified: the 95%% "
                        "lower bound is %.4f; %s split images would certify it", rec.split_min_agreement, n,
                        final["agreement"], rec.agreement_lower_95, rec.split_images_needed)
    else:
        rec.status = "cap_reached"
        LOG.warning("int8 split budget %.3f not met: %d promoted layers (the cap, %s of the MACs) agree on %.4f",
                    rec.split_min_agreement, len(rec.promoted), rec.max_promoted_macs, final["agreement"])


def search(base: onnx.ModelProto, exact: onnx.ModelProto | None, prepped: onnx.ModelProto, layers: list[Layer],
           policy: str, runtime: str, split: tuple[np.ndarray, np.ndarray] | None, rank_images: np.ndarray,
           options: BuildOptions, emulate: bool, threads: int = 2, rounding_images: np.ndarray | None = None
           ) -> tuple[onnx.ModelProto, SearchRecord]:
    """The quantized graph that meets `split_min_agreement` on the split with the fewest promoted layers (or the
    most the cap and the priced speed floor allow, when none meets it), and its record. With `weight_rounding:
    gptq` the integer weights are first rounded by output error on `rounding_images` (default: `rank_images`)."""
    t0 = time.monotonic()
    budget = float(options.split_min_agreement)
    prep = prepare(base, exact, prepped, layers, policy, runtime, rank_images, rounding_images, options, threads)
    rec = SearchRecord(budget, options.max_promoted_macs, **prep.records, measured=dict(prep.seconds))
    rec.split_images = 0 if split is None else len(split[0])
    rec.why = not_checked_why(rec.split_images, budget)
    if rec.why:
        LOG.warning("int8 split budget not checked: %s", rec.why)
        rec.measured["search_s"] = round(time.monotonic() - t0, 2)
        return prep.base, rec
    costs = promotion_costs.for_isa(kernel_isa())   # the ISA the trials run on, or the nearest one measured
    ranking, order, slowdown, total_macs = ranked(prep, runtime, options, costs)
    rec.disagreements_allowed = int(math.floor((1 - budget) * rec.split_images + 1e-9))
    fp32_run = trial_runner(runtime, False, threads)(prepped)
    ref_logits, fp32_s_per_image = split_logits(fp32_run, split[0])
    trials = Trials(prep, prepped, order, split, trial_runner(runtime, emulate, threads), ref_logits,
                    rec.disagreements_allowed, options)
    chosen, _, rec.why = chosen_prefix(trials, len(order), options.split_signal)
    priced = promotion_costs.int8_speed(costs, runtime, policy)
    chosen, rec.speed_floor, held_back = speed_floor(chosen, order, slowdown, priced, options)
    final = trials.scored(chosen)
    rec.promoted = [[la.name, k] for la, k, _ in order[:chosen]]
    settle_status(rec, final, held_back, options.split_signal)
    rec.signal, rec.quantized_layer_macs = options.split_signal, total_macs
    rec.cap_macs = int(rec.max_promoted_macs * total_macs)
    rec.trials_run_as = ("ONNX Runtime, QDQ graph unfused in float (this CPU cannot run the target's int8 kernels "
                         "exactly; speed not measured)" if emulate else f"{runtime}, the build's own kernels")
    rec.ranking = {"images": len(rank_images), "metric": "output noise-to-signal ratio the promotion removes "
                   "(float model, one pass per weight set), per predicted slowdown (measured promotion costs, "
                   f"{promotion_costs.COST_FILE.name})",
                   "layers": [[la.name, k, round(s, 8), la.macs, round(slowdown[la.name], 5)] for la, k, s in ranking]}
    rec.promotion_costs = {k: costs[k] for k in ("kernel_isa", "priced_with", "measured", "cpu_flags")}
    rec.predicted_slowdown = round(sum(slowdown[la.name] for la, _, _ in order[:chosen]), 4)
    rec.promoted_macs_fraction = round(sum(la.macs for la, _, _ in order[:chosen]) / max(total_macs, 1), 4)
    rec.steps = [{k: v for k, v in trials.results[p].items() if k != "measured"} for p in sorted(trials.results)]
    rec.final_agreement, rec.final_expected_agreement = final["agreement"], final["expected_agreement"]
    rec.final_kl, rec.final_logit_mse = final["kl"], final["logit_mse"]
    model = trials.graph(chosen)
    rec.measured.update(measured_speed(trials, fp32_run, fp32_s_per_image, model, emulate,
                                       float(options.min_speed_over_fp32), chosen))
    rec.measured["search_s"] = round(time.monotonic() - t0, 2)
    return model, rec

"""Trials of an int8 search: each opens a candidate graph on the build's runtime, runs the validation split and
scores it against the fp32 model (top-1 agreement, the continuous signals of split_signals). What a trial decides
comes from logits only; its timings (effzoo.speed's harness) are measurements, recorded under `measured`.

A trial is one session of the build's runtime on the trial graph (ONNX Runtime fuses the QDQ pattern into its
int8 kernels when the session opens, so a session cannot take new weights); where the building CPU cannot run the
target's kernels exactly (a vnni target built without VNNI), trials run the QDQ graph unfused, in float: the same
integer arithmetic up to float rounding, and speed is not measured.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import onnx
from effzoo import speed
from effzoo.common import LOG, ZooError
from effzoo.graph_edits import PRE_INPUT
from effzoo.openvino_ir import convert
from effzoo.ort_session import open_session
from effzoo.qdq_graph import promoted_model

# the batch trials run and are timed at: the race's (the largest of the benchmark's default batch_sizes; a test
# ties the two)
TRIAL_BATCH = 16
SPEED_ROUNDS = 3   # interleaved rounds of the final speed measurement
SPEED_IMAGES = 64  # split images a round times per model (b7 at 600, 200-image split: ~3 min instead of ~9)


def trial_runner(runtime: str, emulate: bool, threads: int):
    """A function model -> (batch -> logits) that opens the model on the build's runtime; `emulate`: ONNX Runtime
    with every graph optimization off, so the QDQ graph runs unfused in float (exact int8 arithmetic up to float
    rounding, on any CPU)."""
    if runtime == "openvino" and not emulate:
        import openvino as ov

        core = ov.Core()

        def open_ov(model: onnx.ModelProto):
            with tempfile.TemporaryDirectory() as td:
                path = Path(td) / "trial.onnx"
                onnx.save(model, str(path))
                # converted as the IR is (read_model of the ONNX file computed differently: measured 0.99 vs
                # 0.98 agreement on a lite0 split)
                compiled = core.compile_model(convert(str(path)), "CPU", {
                    "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
            out = compiled.output("logits")
            return lambda x: compiled(x)[out]
        return open_ov

    def open_ort(model: onnx.ModelProto):
        sess = open_session(model, threads, "none" if emulate else "all")
        return lambda x: sess.run(["logits"], {PRE_INPUT: x})[0]
    return open_ort


def split_signals(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Distances of an int8 build's split logits from the fp32 model's (`reference`, same images), per image and
    continuous, so that a decision does not hang on whether one image of ~100 flips:
      * kl: mean KL(softmax fp32 || softmax int8), in nats; logit_mse: mean squared logit error;
      * expected_agreement: the agreement the build is expected to have on images it has not seen. Image i keeps
        its top-1 class when its margin loss l_i (its fp32 top-1 margin minus its int8 margin for that class, >0
        when int8 moves towards another class) stays below its margin m_i. Pairing every image's loss with every
        image's fp32 margin, 1 - mean over i != j of [l_i >= m_j], estimates P(l < m) from n(n-1) pairs instead of
        n: a margin-loss distribution and a margin distribution, each measured on the whole split."""
    ref = reference.astype(np.float64)
    out = logits.astype(np.float64)
    n = len(ref)
    top = ref.argmax(axis=1)
    rows = np.arange(n)
    ref_others, out_others = ref.copy(), out.copy()
    ref_others[rows, top] = -np.inf
    out_others[rows, top] = -np.inf
    margin = ref[rows, top] - ref_others.max(axis=1)
    int8_margin = out[rows, top] - out_others.max(axis=1)
    loss = margin - int8_margin
    # pairs (i, j): count margins m_j <= l_i with a sort, then drop the i == j pairs
    m_sorted = np.sort(margin)
    below = np.searchsorted(m_sorted, loss, side="right").sum() - int((loss >= margin).sum())
    expected = 1.0 - below / (n * (n - 1)) if n > 1 else float(loss[0] < margin[0])

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(ref), log_softmax(out)
    kl = float(np.mean((np.exp(lp) * (lp - lq)).sum(axis=1)))
    return {"agreement": float(np.mean(out.argmax(axis=1) == top)), "expected_agreement": float(expected),
            "kl": kl, "logit_mse": float(np.mean((out - ref) ** 2))}


def timed(run, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(logits, seconds per image) of one batch."""
    t = time.perf_counter()
    out = run(x)
    return out, (time.perf_counter() - t) / len(x)


def split_logits(run, images: np.ndarray) -> tuple[np.ndarray, float]:
    """(logits of the split, median seconds per image over its batches after one warm-up batch) of a model."""
    run(images[:TRIAL_BATCH])
    outs, per_image = zip(*(timed(run, images[i:i + TRIAL_BATCH]) for i in range(0, len(images), TRIAL_BATCH)))
    return np.concatenate(outs), float(np.median(per_image))


def interleaved_speed(fp32_run, run, images: np.ndarray) -> float:
    """A graph's speed over the fp32 model's: SPEED_ROUNDS interleaved rounds of effzoo.speed.measure (the
    benchmark's and the race's harness), each running both on SPEED_IMAGES // TRIAL_BATCH batches of the split;
    the median of the rounds' paired ratios, robust to the machine's drift between trials."""
    batch = images[:TRIAL_BATCH]
    timed_runs = speed.measure({"fp32": fp32_run, "trial": run}, batch, len(batch),
                               max(1, SPEED_IMAGES // TRIAL_BATCH), 1, SPEED_ROUNDS)
    return speed.paired_ratio(timed_runs["trial"], timed_runs["fp32"])["median"]


def run_trial(run, images: np.ndarray, reference: np.ndarray, allowed: int, ref_logits: np.ndarray | None = None,
              signal: str = "agreement", budget: float = 0.0, stop_early: bool = True) -> dict:
    """A trial on the split: top-1 agreement with the reference top-1 and the continuous signals against the fp32
    logits (split_signals); under `measured`, its seconds and the median batch's seconds per image after one
    warm-up batch. signal "agreement" passes when the disagreements stay within `allowed` (and, with
    `stop_early`, stops once they exceed it: the trial cannot pass any more); "expected_agreement" runs the whole
    split and passes when that estimate reaches `budget`."""
    if signal == "expected_agreement" and ref_logits is None:
        raise ZooError("split_signal expected_agreement needs the fp32 logits of the split")
    run(images[:TRIAL_BATCH])   # warm-up, not timed: the session's first call allocates
    t0 = time.monotonic()
    wrong = seen = 0
    outs, per_image = [], []
    for i in range(0, len(images), TRIAL_BATCH):
        logits, secs = timed(run, images[i:i + TRIAL_BATCH])
        outs.append(logits)
        per_image.append(secs)
        wrong += int((logits.argmax(axis=1) != reference[i:i + TRIAL_BATCH]).sum())
        seen += len(logits)
        if stop_early and signal == "agreement" and wrong > allowed:
            break
    measured = {"s": round(time.monotonic() - t0, 2), "s_per_image": round(float(np.median(per_image)), 8)}
    if seen < len(images):
        return {"passed": False, "disagreements_at_least": wrong, "images_run": seen,
                "agreement_at_most": round(1 - wrong / len(images), 6), "measured": measured}
    result = {"disagreements": wrong, "images_run": seen, "agreement": round(1 - wrong / len(images), 6)}
    if ref_logits is not None:
        sig = split_signals(np.concatenate(outs), ref_logits)
        result.update(expected_agreement=round(sig["expected_agreement"], 6), kl=round(sig["kl"], 6),
                      logit_mse=round(sig["logit_mse"], 6))
    passed = result["expected_agreement"] >= budget if signal == "expected_agreement" else wrong <= allowed
    return {"passed": passed, **result, "measured": measured}


class Trials:
    """Trials of prefixes of the promotion order on the split, each on a fresh session of the trial graph; keeps
    the last graph built and every trial's result."""

    def __init__(self, prep, prepped: onnx.ModelProto, order: list, split: tuple, opener, ref_logits,
                 allowed: int, options):
        self.prep, self.prepped, self.order, self.opener = prep, prepped, order, opener
        self.images, self.reference = split
        self.ref_logits, self.allowed, self.options = ref_logits, allowed, options
        self.results: dict[int, dict] = {}
        self._graph: tuple[int, onnx.ModelProto] | None = None

    def graph(self, p: int) -> onnx.ModelProto:
        """The graph with the first p layers of the order promoted."""
        if self._graph is None or self._graph[0] != p:
            self._graph = (p, promoted_model(self.prep.base, [(la, k) for la, k, _ in self.order[:p]], self.prepped,
                                             self.prep.exact))
        return self._graph[1]

    def __call__(self, p: int, full: bool = False) -> dict:
        t = time.monotonic()
        run = self.opener(self.graph(p))
        open_s = time.monotonic() - t
        result = {"layers": p, **run_trial(run, self.images, self.reference, self.allowed, self.ref_logits,
                                           self.options.split_signal, float(self.options.split_min_agreement),
                                           stop_early=not full)}
        result["measured"]["open_s"] = round(open_s, 2)
        LOG.info("budget trial: %d promoted layers: %s", p, result)
        self.results[p] = result
        return result

    def scored(self, p: int) -> dict:
        """The trial of prefix p scored on the whole split (run again where it stopped early)."""
        done = self.results.get(p)
        return done if done is not None and "disagreements" in done and "kl" in done else self(p, full=True)


def measured_speed(trials: Trials, fp32_run, fp32_s_per_image: float, model: onnx.ModelProto, emulate: bool,
                   floor: float, chosen: int) -> dict:
    """What the search timed, deciding nothing: the fp32 model's seconds per image on the split, each trial's
    seconds (and, on the build's own kernels, its speed over the fp32 model, median batch), and the chosen graph's
    speed over the fp32 model in interleaved rounds (`split_speed_over_runtime_fp32`), with a note when that is
    below the floor or below fp32."""
    out = {"fp32_s_per_image": round(fp32_s_per_image, 5),
           "trials": {str(p): t["measured"] for p, t in sorted(trials.results.items())}}
    if emulate:
        return out
    for t in out["trials"].values():
        t["speed_over_runtime_fp32"] = round(fp32_s_per_image / t["s_per_image"], 3)
    split_speed = round(interleaved_speed(fp32_run, trials.opener(model), trials.images), 3)
    out["split_speed_over_runtime_fp32"] = split_speed
    if split_speed < max(1.0, floor):
        out["note"] = (f"{split_speed:.2f}x the fp32 model on the split with {chosen} promoted layers: "
                       + ("slower than fp32" if split_speed < 1.0 else f"below min_speed_over_fp32 {floor}"))
        LOG.warning("int8 build timed on its split: %s", out["note"])
    return out

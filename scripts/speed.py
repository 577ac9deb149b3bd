"""Interleaved timing of ONNX Runtime models: medians over rounds, engines in rotating order."""
from __future__ import annotations

import os
import time

import numpy as np


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def time_sessions(sessions: dict, batch: np.ndarray, rounds: int = 7, calls: int = 3, warmup: int = 2) -> dict:
    """{name: callable(batch)} -> {name: {median_ms, min_ms, max_ms}} per call, run round-robin in rotating
    order so that machine noise hits every engine alike."""
    names = list(sessions)
    for n in names:
        for _ in range(warmup):
            sessions[n](batch)
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            for _ in range(calls):
                t0 = time.perf_counter()
                sessions[n](batch)
                samples[n].append((time.perf_counter() - t0) * 1000)
    return {n: {"median_ms": float(np.median(s)), "min_ms": float(np.min(s)), "max_ms": float(np.max(s)),
                "p90_ms": float(np.percentile(s, 90)), "calls": len(s)} for n, s in samples.items()}


def ort_runner(model_path: str, threads: int = 2):
    """A callable running an ORT CPU session (full optimization) on a uint8 NHWC batch."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(["probs"], {name: x})

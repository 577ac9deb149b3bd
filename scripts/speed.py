"""Interleaved timing of ONNX Runtime models: medians over rounds, engines in rotating order."""
from __future__ import annotations

import os
import time

import numpy as np


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_ticks() -> tuple[int, int] | None:
    """(all, steal) CPU ticks since boot from /proc/stat; None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def steal_percent(before, after) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two cpu_ticks() readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])


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
            time.sleep(0.1)   # let the previous engine's spinning worker threads go idle
            for _ in range(calls):
                t0 = time.perf_counter()
                sessions[n](batch)
                samples[n].append((time.perf_counter() - t0) * 1000)
    return {n: {"median_ms": float(np.median(s)), "min_ms": float(np.min(s)), "max_ms": float(np.max(s)),
                "p90_ms": float(np.percentile(s, 90)), "calls": len(s)} for n, s in samples.items()}


def ort_runner(model_path: str, threads: int = 2, layout_tuning: bool = True):
    """A callable running a build's ORT CPU session (as predict runs it) on a uint8 NHWC batch."""
    from ort_session import make_session

    sess, _ = make_session(model_path, threads, layout_tuning)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(["probs"], {name: x})

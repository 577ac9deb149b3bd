"""Timing helpers: interleaved measurement of engines (medians over rounds), load and CPU steal."""
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


def measure(runners: dict, batch: np.ndarray, images_per_call: int | dict, iterations: int, warmup: int,
            rounds: int, progress=None, settle_s: float = 0.1, first_round: int = 0) -> dict:
    """{name: callable(batch)} timed in interleaved rounds, engines in rotating order so that machine noise
    hits every engine alike; returns per engine throughput (median over rounds, min/max, and each round's) and
    latency stats (over all calls, and each round's 90th percentile). `images_per_call`: images one call processes,
    for every engine or per engine name. `first_round` continues the rotation of an earlier call (a race that adds
    rounds). A failing call raises: nothing is timed past an error.

    Each engine's turn starts `settle_s` after the previous one's: idle worker threads keep spinning for a
    while after a call (measured here: the engine right after PyTorch ran 5-11% slower without the pause).
    """
    names = list(runners)
    for n in names:
        for _ in range(warmup):
            runners[n](batch)
    lat = {n: [] for n in names}
    thr = {n: [] for n in names}
    p90 = {n: [] for n in names}
    for r in range(first_round, first_round + rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle_s)
            t_round = time.perf_counter()
            for _ in range(iterations):
                t0 = time.perf_counter()
                runners[n](batch)
                lat[n].append((time.perf_counter() - t0) * 1000)
            per_call = images_per_call[n] if isinstance(images_per_call, dict) else images_per_call
            thr[n].append(per_call * iterations / (time.perf_counter() - t_round))
            p90[n].append(float(np.percentile(lat[n][-iterations:], 90)))
            if progress is not None:
                progress.update()
    out = {}
    for n in names:
        a = np.asarray(lat[n])
        out[n] = {"throughput_ips": float(np.median(thr[n])), "throughput_min": float(np.min(thr[n])),
                  "throughput_max": float(np.max(thr[n])), "throughput_rounds": [round(t, 3) for t in thr[n]],
                  "latency_p90_rounds": [round(t, 4) for t in p90[n]],
                  "latency_mean_ms": float(a.mean()),
                  "latency_p50_ms": float(np.percentile(a, 50)), "latency_p90_ms": float(np.percentile(a, 90)),
                  "latency_p99_ms": float(np.percentile(a, 99)), "calls": int(a.size)}
    return out


def paired_ratio(engine: dict, baseline: dict) -> dict:
    """An engine's throughput over a baseline's, round by round (the two ran back to back in each round, so drift
    of the machine between rounds cancels): the median ratio and its min/max over rounds."""
    ratios = [a / b for a, b in zip(engine["throughput_rounds"], baseline["throughput_rounds"])]
    return {"median": float(np.median(ratios)), "min": float(np.min(ratios)), "max": float(np.max(ratios))}

"""Timing helpers: CPU steal accounting and the pause between interleaved engines."""
import time

import numpy as np

from effzoo import speed
from effzoo.common import Progress


def test_steal_percent():
    assert speed.steal_percent((1000, 10), (1200, 40)) == 15.0
    assert speed.steal_percent(None, (1200, 40)) is None
    assert speed.steal_percent((1200, 40), (1200, 40)) is None
    ticks = speed.cpu_ticks()
    assert ticks is None or (ticks[0] > 0 and 0 <= ticks[1] <= ticks[0])


def test_measure_pauses_between_engine_turns():
    calls = []
    runners = {n: (lambda x, n=n: calls.append((n, time.perf_counter()))) for n in ("a", "b")}
    out = speed.measure(runners, np.zeros(1), 1, iterations=1, warmup=0, rounds=2,
                        progress=Progress(4, "t", 1e9), settle_s=0.05)
    gaps = [t1 - t0 for (_, t0), (_, t1) in zip(calls, calls[1:])]
    assert [n for n, _ in calls] == ["a", "b", "b", "a"] and min(gaps) >= 0.05
    assert set(out) == {"a", "b"} and out["a"]["calls"] == 2

"""Which images of a calibration source calibrate an int8 build and which check it: the sizes of the range set and
the validation split, and their seeded, class-balanced, disjoint selection. numpy only (the workflow's planning
reads the sizes too).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def split_sizes(available: int, images: int, validation: int) -> tuple[int, int]:
    """(range images, validation images) from a source of `available` images; when it holds fewer than both
    counts, the split gets its proportional share but at most half of the source (the ranges come first)."""
    if available >= images + validation:
        return images, validation
    val = min(round(available * validation / (images + validation)), available // 2)
    return min(images, available - val), val


def balanced_selection(labels: list[int], n: int, seed: int = 0) -> list[int]:
    """Indices of n rows drawn class-balanced: round-robin over the classes (in a seeded random order),
    each class's rows seeded-shuffled; every class is represented when n >= number of classes."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_class[lab].append(i)
    classes = sorted(by_class)
    rng.shuffle(classes)
    queues = {c: list(rng.permutation(by_class[c])) for c in classes}
    chosen: list[int] = []
    while len(chosen) < min(n, len(labels)):
        for c in classes:
            if queues[c] and len(chosen) < n:
                chosen.append(int(queues[c].pop()))
    return sorted(chosen)


def calibration_split(labels: list[int], images: int, validation: int, seed: int) -> tuple[list[int], list[int]]:
    """(range rows, validation rows): the validation split is drawn first, seeded and class-balanced; the range
    images are drawn the same way from the rest, so the two never share an image."""
    n_range, n_val = split_sizes(len(labels), images, validation)
    val = balanced_selection(labels, n_val, seed) if n_val else []
    taken = set(val)
    rest = [i for i in range(len(labels)) if i not in taken]
    chosen = balanced_selection([labels[i] for i in rest], n_range, seed)
    return [rest[j] for j in chosen], val

"""Scoring: top-1/top-5 and agreement on hand-made predictions."""
from __future__ import annotations

import numpy as np
import pytest

from metrics import score
from zoo_common import ZooError


def test_score_top1_top5():
    labels = np.array([3, 1, 4, 1])
    top = np.array([[3, 0, 0, 0, 0], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9], [0, 0, 0, 0, 1]])
    assert score(labels, top) == {"top1": 0.25, "top5": 0.75, "images": 4}


def test_score_empty_is_an_error():
    with pytest.raises(ZooError):
        score(np.zeros(0, int), np.zeros((0, 5), int))

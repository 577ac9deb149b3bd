"""The statistics behind every accuracy and speed claim: exact intervals, and the three states of a budget.

Accuracy (against the fp32 build, on the same images):
  * agreement, top-1, top-5: Clopper-Pearson exact 95% intervals;
  * the top-1 loss (fp32's top-1 minus the build's) from the discordant images: of n images, d = b + c are
    discordant, b lost by the build (fp32 right, build wrong) and c gained. loss = (d / n) x (2 b / d - 1); the
    interval combines the exact 97.5% intervals of the discordant share d / n and of the losing share b / d
    (Bonferroni: both hold together with at least 95%), so it covers a paired change in either direction.
Against a budget (min agreement, max top-1 loss) a build is `certified` (both bounds inside it), `refuted` (a bound
outside it) or `unproven` (neither). `images_needed` is the number of images at which the observed rates would
certify it. With no discordant image a loss of at most 0.5 pt needs 875 images (1 - 0.0125^(1/n) <= 0.005).

Speed (a race: candidates timed round by round in one process): each round gives a candidate's speed over the
leader's in that round; the interval of the ratio is Student's t on the logs of the per-round ratios. Few rounds
(5-20) are too few for a bootstrap to keep its coverage, and timing noise is multiplicative. The race looks at its
intervals after every `rounds` rounds, up to `looks` times. Each look's interval is at 1 - 0.05 / looks
(Bonferroni), so whichever look the race stops at, the error rate of its statements stays at most 5%.
Standard library only.
"""
from __future__ import annotations

import math

LEVEL = 0.95
STATES = ("certified", "unproven", "refuted")


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 20000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _solve(f, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for an increasing f (bisection to double precision)."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def clopper_pearson(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion k / n; counts may be fractional (scaled rates)."""
    if n <= 0:
        return 0.0, 1.0
    tail = (1 - level) / 2
    lo = 0.0 if k <= 0 else _solve(lambda p: betainc(k, n - k + 1, p), tail, 0.0, 1.0)
    hi = 1.0 if k >= n else _solve(lambda p: betainc(k + 1, n - k, p), 1 - tail, 0.0, 1.0)
    return lo, hi


def loss_interval(lost: float, gained: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The interval of a paired top-1 loss (reference top-1 minus the build's) from its discordant images: `lost`
    where only the reference is right, `gained` where only the build is (module docstring)."""
    part = 1 - (1 - level) / 2
    d = lost + gained
    d_lo, d_hi = clopper_pearson(d, n, part)
    t_lo, t_hi = clopper_pearson(lost, d, part) if d > 0 else (0.0, 1.0)
    hi = (2 * t_hi - 1) * (d_hi if t_hi >= 0.5 else d_lo)
    lo = (2 * t_lo - 1) * (d_hi if t_lo <= 0.5 else d_lo)
    return lo, hi


def state(agree_interval: tuple[float, float], loss: tuple[float, float], budget: dict) -> str:
    """`certified`, `refuted` or `unproven` against a budget {min_agreement, max_top1_loss}."""
    if agree_interval[1] < budget["min_agreement"] or loss[0] > budget["max_top1_loss"]:
        return "refuted"
    if agree_interval[0] >= budget["min_agreement"] and loss[1] <= budget["max_top1_loss"] + 1e-12:
        return "certified"
    return "unproven"


def smallest_n(holds, limit: int = 10**8) -> int | None:
    """The smallest n >= 1 for which `holds(n)` (true from some n on), by doubling then bisection; None past
    `limit`."""
    hi = 1
    while not holds(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return hi


def images_needed(agreeing: int, lost: int, gained: int, n: int, budget: dict) -> int | None:
    """The number of images at which the observed rates (agreement, lost and gained shares) would certify the
    budget; None when the rates themselves miss it (no number of images would)."""
    if n <= 0:
        return None

    def certified(m: int) -> bool:
        s = m / n
        return state(clopper_pearson(agreeing * s, m), loss_interval(lost * s, gained * s, m), budget) == "certified"
    return smallest_n(certified)


def accuracy_evidence(top1: int, top5: int, agreeing: int, lost: int, gained: int, n: int, budget: dict,
                      reference: bool = False) -> dict:
    """A build's accuracy figures against the fp32 build on the same n images, each with its exact interval, and its
    state against the deploy budget. The reference itself agrees with itself exactly: agreement [1, 1], loss [0, 0],
    certified."""
    if reference:
        agree, loss = (1.0, 1.0), (0.0, 0.0)
    else:
        agree, loss = clopper_pearson(agreeing, n), loss_interval(lost, gained, n)
    doc = {"images": n, "level": LEVEL,
           "top1": {"value": top1 / n, "interval": list(clopper_pearson(top1, n))},
           "top5": {"value": top5 / n, "interval": list(clopper_pearson(top5, n))},
           "agreement": {"value": agreeing / n, "interval": list(agree)},
           "top1_loss": {"value": (lost - gained) / n, "interval": list(loss), "lost": lost, "gained": gained},
           "state": state(agree, loss, budget), "budget": {k: budget[k] for k in ("min_agreement", "max_top1_loss")}}
    if doc["state"] == "unproven":
        doc["images_needed"] = images_needed(agreeing, lost, gained, n, budget)
    return doc


def not_certified_note(evidence: dict) -> str:
    """'accuracy not certified: N images scored, about M needed' (or why no number of images would do)."""
    needed = evidence.get("images_needed")
    tail = (f"about {needed} needed" if needed else
            f"at the observed agreement ({evidence['agreement']['value']:.3f}) and top-1 loss "
            f"({100 * evidence['top1_loss']['value']:.2f} pt) no number of images would certify the budget")
    return f"accuracy not certified: {evidence['images']} images scored, {tail}"


def interval_text(figure: dict, scale: float = 100.0, digits: int = 1) -> str:
    """'88.2 [85.1, 90.8]': a figure and its interval (in % by default)."""
    lo, hi = figure["interval"]
    return f"{scale * figure['value']:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


# --- speed ---

def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (p > 0.5)."""
    def cdf(t: float) -> float:
        return 1 - 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    hi = 1.0
    while cdf(hi) < p:
        hi *= 2
    return _solve(cdf, p, 0.0, hi)


def ratio_interval(ratios: list[float], looks: int = 1, level: float = LEVEL) -> tuple[float, float, float]:
    """(geometric mean, lower, upper) of per-round speed ratios: Student's t on their logs, each of `looks` looks at
    1 - (1 - level) / looks; (mean, 0, inf) with fewer than two rounds."""
    logs = [math.log(r) for r in ratios]
    n = len(logs)
    mean = sum(logs) / n
    if n < 2:
        return math.exp(mean), 0.0, math.inf
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = t_quantile(1 - (1 - level) / looks / 2, n - 1) * sd / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def speed_state(interval: tuple[float, float], tolerance: float) -> str:
    """A candidate against the leader: `tied` (its ratio's lower end is at least 1 - tolerance), `slower` (its upper
    end is below it) or `unresolved`."""
    if interval[0] >= 1 - tolerance:
        return "tied"
    if interval[1] < 1 - tolerance:
        return "slower"
    return "unresolved"

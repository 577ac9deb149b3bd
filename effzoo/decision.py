"""Which build of a variant to deploy: one decision, made on a race's timings and the accuracy evidence.

The race (effzoo/steps/race.py) times the candidates round by round in one process; `decide` turns its per-round
figures and every build's accuracy state (effzoo.evidence) into the choice that deploy/<variant>/ and the report's
fastest build both read from the race's file. The rule:
  * the pool is the certified builds when a build other than fp32 is certified (or `require: certified`), else
    every raced build (none of them refuted);
  * the leader is the pool's build with the highest median speed; every other pool build gets the interval of its
    per-round speed over the leader's (evidence.ratio_interval): `tied` when it is confidently within `tolerance`,
    `slower` when confidently not, else `unresolved` (the race adds rounds; unresolved at the cap counts as slower);
  * a tied build is chosen over the leader only for stronger accuracy evidence: certified over unproven, then the
    higher lower bound of agreement with fp32 (fp32's is 1); on equal evidence the leader stays, then run_quant
    order.
"""
from __future__ import annotations

from statistics import median

from effzoo.common import ZooError
from effzoo.cpu_target import covers, lacking_flags
from effzoo.evidence import interval_text, not_certified_note, ratio_interval, speed_state


def race_candidates(evidence: dict, cpus: dict, cpu: str, flags: set[str],
                    order: list[str]) -> tuple[list[str], dict]:
    """(the builds a race on a `cpu` CPU with these flags times, in run_quant order; why each other build is left
    out): every build that the accuracy evidence does not refute and that this CPU runs (cpus: build -> build.json
    'cpu': its kind and any flags it requires)."""
    candidates, left_out = [], {}
    for q in order:
        e, lacking = evidence[q], lacking_flags(cpus[q], flags)
        if e["state"] == "refuted":
            left_out[q] = (f"refuted by the accuracy evidence: agreement {interval_text(e['agreement'])} %, top-1 "
                           f"loss {interval_text(e['top1_loss'], digits=2)} pt on {e['images']} images")
        elif not covers(cpu, cpus[q]["requires"]):
            left_out[q] = f"requires a {cpus[q]['requires']} CPU; the race ran on a {cpu} CPU"
        elif lacking:
            left_out[q] = f"requires {' or '.join(lacking)}, which the race's CPU lacks"
        else:
            candidates.append(q)
    return candidates, left_out


def ratio(rounds: dict, q: str, ref: str, looks: int) -> list[float]:
    """[ratio, lower, upper] of q's per-round speed over ref's (1 for a build against itself)."""
    if q == ref:
        return [1.0, 1.0, 1.0]
    return list(ratio_interval([a / b for a, b in zip(rounds[q], rounds[ref])], looks))


def decide(evidence: dict, rounds: dict, order: list[str], tolerance: float, require: str, looks: int) -> dict:
    """The decision from the accuracy evidence ({build: effzoo.evidence.accuracy_evidence}) and a race's per-round
    speeds ({raced build: figures, higher is faster}); builds in run_quant `order`."""
    raced = [q for q in order if q in rounds]
    certified = [q for q in raced if evidence[q]["state"] == "certified"]
    if require == "certified" or any(q != "fp32" for q in certified):
        pool, pool_rule = certified, "certified builds"
    else:
        pool, pool_rule = raced, "builds the accuracy evidence does not refute (only fp32 is certified)"
    if not pool:
        raise ZooError(f"no raced build is in the pool ({pool_rule}): race fp32, the reference of the evidence")
    leader = max(pool, key=lambda q: (median(rounds[q]), -order.index(q)))
    builds = {}
    for q in raced:
        r = ratio(rounds, q, leader, looks)
        builds[q] = {"speed_over_leader": [round(x, 4) for x in r], "accuracy_state": evidence[q]["state"],
                     "speed_state": "leader" if q == leader else speed_state(r[1:], tolerance),
                     "in_pool": q in pool}
    tied = [q for q in pool if builds[q]["speed_state"] in ("leader", "tied")]
    chosen = max(tied, key=lambda q: (evidence[q]["state"] == "certified", evidence[q]["agreement"]["interval"][0],
                                      q == leader, -order.index(q)))
    unresolved = [q for q in pool if builds[q]["speed_state"] == "unresolved"]
    out = {"chosen": chosen, "leader": leader, "pool": pool_rule, "tolerance": tolerance, "require": require,
           "tied_with_leader": [q for q in tied if q != leader], "unresolved": unresolved, "builds": builds,
           "passed_over": {q: why(q, builds[q], chosen, leader, tolerance) for q in raced if q != chosen}}
    if evidence[chosen]["state"] != "certified":
        out["note"] = not_certified_note(evidence[chosen])
    return out


def why(q: str, b: dict, chosen: str, leader: str, tolerance: float) -> str:
    """Why a raced build was not chosen, in one line."""
    r = b["speed_over_leader"]
    speed = f"{r[0]:.3f}x [{r[1]:.3f}, {r[2]:.3f}]"
    if not b["in_pool"]:
        return f"{b['accuracy_state']}, while certified builds exist ({speed} the leader {leader})"
    if b["speed_state"] == "leader":
        return f"fastest, but {chosen} is tied with it within {tolerance:.0%} and has stronger accuracy evidence"
    if b["speed_state"] == "tied":
        return f"tied with {leader} within {tolerance:.0%} ({speed}), weaker accuracy evidence than {chosen}"
    if b["speed_state"] == "unresolved":
        return f"not shown to be within {tolerance:.0%} of {leader} at the race's round cap ({speed}): counted slower"
    return f"slower than {leader} ({speed})"

"""What an int8 promotion costs in speed, by the kernel ISA it runs on: the table the int8 search prices with.

effzoo/promotion_cost.json holds, per kernel ISA (`by_kernel_isa`: avx2, avx512, avx_vnni, avx512_vnni, amx;
tools/promotion_cost.py --update measures the ISA of the machine it runs on), the slowdown of the int8 graph per
unit share of its quantized MACs promoted, per runtime and kind of promotion, and the unpromoted int8 graph's
speed over its runtime's fp32 build (the search's priced speed floor). A build prices with the entry of
the ISA its trials run on; where that ISA was never measured, with the nearest measured one in ISA_ORDER (ties to
the lower), and says which (`priced_with`). Only that entry is part of the build step's fingerprint, so measuring
a new ISA reruns no build that prices with another. Standard library only.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from effzoo.common import ZooError
from effzoo.cpu_target import kernel_isa

COST_FILE = Path(__file__).with_name("promotion_cost.json")   # tools/promotion_cost.py --update
ISA_ORDER = ("avx2", "avx512", "avx_vnni", "avx512_vnni", "amx")   # cpu_target.kernel_isa's int8 kernel ISAs


def read_table(path: Path = COST_FILE) -> dict:
    """{kernel ISA: its entry (measured, cpu_flags, command, variant, batch, threads, slowdown_per_mac_share)} of a
    cost file."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))["by_kernel_isa"]
    except (OSError, ValueError, KeyError) as e:
        raise ZooError(f"{path}: promotion costs not readable ({e}); measure them with "
                       f"tools/promotion_cost.py --update") from None
    unknown = sorted(set(table) - set(ISA_ORDER))
    if not table or unknown:
        raise ZooError(f"{path}: by_kernel_isa has {sorted(table)}; expected some of {', '.join(ISA_ORDER)}")
    return table


@lru_cache(maxsize=1)
def measured() -> dict:
    """The package's cost table (read once)."""
    return read_table(COST_FILE)


def nearest(isa: str, available) -> str:
    """The measured ISA nearest to `isa` in ISA_ORDER (ties to the lower; an ISA below avx2, or unknown, prices
    as avx2 would)."""
    at = ISA_ORDER.index(isa) if isa in ISA_ORDER else 0
    return min(available, key=lambda m: (abs(ISA_ORDER.index(m) - at), ISA_ORDER.index(m)))


def for_isa(isa: str, table: dict | None = None) -> dict:
    """The costs a build whose trials run on `isa` kernels prices with: {'kernel_isa', 'priced_with', 'measured',
    'cpu_flags', 'slowdown_per_mac_share': {runtime: {kind: slowdown}}}."""
    table = measured() if table is None else table
    used = isa if isa in table else nearest(isa, table)
    entry = table[used]
    return {"kernel_isa": isa, "priced_with": used, "measured": entry["measured"], "cpu_flags": entry["cpu_flags"],
            "slowdown_per_mac_share": entry["slowdown_per_mac_share"],
            "int8_speed_over_fp32": entry.get("int8_speed_over_fp32", {})}


def int8_speed(costs: dict, runtime: str, policy: str) -> float:
    """The priced speed of an unpromoted int8 graph over its runtime's fp32 build (an entry of for_isa): ONNX
    Runtime's per reduce_range policy ('none', or 'saturating' for 7-bit weights, which 'all' also prices as);
    OpenVINO runs both policies' graphs on the same kernels and has one figure ('none')."""
    key = "saturating" if runtime == "onnxruntime" and policy != "none" else "none"
    speed = costs["int8_speed_over_fp32"].get(runtime, {}).get(key)
    if speed is None:
        raise ZooError(f"{COST_FILE}: no int8_speed_over_fp32 {runtime} {key} measured on {costs['priced_with']} "
                       f"kernels; measure it with tools/promotion_cost.py --update")
    return float(speed)


def fingerprint(isa: str, path: Path = COST_FILE) -> str:
    """sha256 of the entry of a cost file that a build on `isa` kernels prices with (what the build step's
    fingerprint includes)."""
    table = read_table(path)
    used = for_isa(isa, table)["priced_with"]
    return hashlib.sha256(json.dumps({"priced_with": used, **table[used]}, sort_keys=True).encode()).hexdigest()


def fingerprint_here(root: Path) -> str:
    """The digest of the entry a build on this machine prices with, in root/effzoo/promotion_cost.json
    (effzoo.fingerprint's STEP_DATA)."""
    return fingerprint(kernel_isa(), Path(root) / "effzoo" / COST_FILE.name)

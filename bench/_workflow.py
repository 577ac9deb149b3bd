"""Helper of the bench scripts: the workflow's config with the schema's defaults filled in (their one home)."""
from __future__ import annotations

from pathlib import Path

import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "imagenet-sample-500"   # the 500 real ImageNet images (README inside)


def resolved_config() -> dict:
    """config.yaml, validated, every default from schemas/config.schema.yaml filled in."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(cfg, str(REPO / "schemas" / "config.schema.yaml"))
    return cfg


def calibrate_args(images: int, batch: int | None = None, validation: int = 0) -> list[str]:
    """calibrate.py's settings flags as the workflow passes them, with `images` (and `batch`) changed and a
    validation split of `validation` images (none by default: the memory benchmarks list images twice)."""
    c = resolved_config()["calibration"]
    return ["--images", str(images), "--validation-images", str(validation), "--seed", str(c["seed"]),
            "--batch", str(batch or c["batch"]),
            "--samples-per-tensor", str(c["samples_per_tensor"]), "--num-bins", str(c["num_bins"]), "--threads", "2"]


def timing_args(ap, variant: str = "tf_efficientnet_lite0") -> None:
    """The arguments the runtime comparisons share: variant, batch, interleaved rounds and calls per round."""
    ap.add_argument("--variant", default=variant)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=3)

"""Regenerate effzoo/timm_pretrained_specs.json, the preprocessing specs of the pinned timm tags, from the installed
timm: what effzoo.preprocess.spec_for reads without importing timm.

usage: python tools/timm_pretrained_specs.py [TAG ...] [--out effzoo/timm_pretrained_specs.json]
With no tag, the tags the table holds now.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from effzoo.common import ZooError, atomic_path, run_main  # noqa: E402
from effzoo.preprocess import PINNED_SPECS_FILE, resolve_timm_spec  # noqa: E402


def specs_table(tags: list[str]) -> dict:
    """The table for these tags from the installed timm."""
    import timm

    if not tags:
        raise ZooError("no tags: name the pinned timm tags whose specs the table holds")
    return {"timm_version": timm.__version__, "specs": {t: resolve_timm_spec(t) for t in tags}}


def write_table(table: dict, path: Path) -> None:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tags", nargs="*", help="timm tags (default: the tags the table holds now)")
    ap.add_argument("--out", default=str(PINNED_SPECS_FILE))
    a = ap.parse_args(argv)
    tags = a.tags
    if not tags and Path(a.out).exists():
        tags = sorted(json.loads(Path(a.out).read_text())["specs"])
    table = specs_table(tags)
    write_table(table, Path(a.out))
    print(f"{a.out}: {len(table['specs'])} specs from timm {table['timm_version']}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))

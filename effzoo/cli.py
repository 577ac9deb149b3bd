"""The `effzoo` command: run and inspect deployed models (deploy/<variant>/ folders).

    effzoo classify deploy/tf_efficientnet_lite0 photo.jpg [more.jpg ...] [--topk 5]
    effzoo info deploy/tf_efficientnet_lite0

Errors are one line naming the file or value at fault (exit status 2), never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from effzoo import __version__
from effzoo.api import load
from effzoo.common import ZooError, read_json, run_main
from effzoo.evidence import interval_text


def cmd_classify(a: argparse.Namespace) -> None:
    model = load(a.deploy_dir, threads=a.threads)
    for path, top in zip(a.images, model.classify(a.images, topk=a.topk, batch=a.batch)):
        print(path)
        for name, p in top:
            print(f"  {p:7.4f}  {name}")


def describe(doc: dict) -> list[str]:
    """The lines `effzoo info` prints for a deploy folder's model.json."""
    acc, speed, cpu = doc["accuracy"], doc["speed"], doc["cpu"]
    ev, measured, weights = acc["evidence"], speed["measured_on"], doc["weights"]
    over = speed.get("speed_over_ort_fp32")
    lines = [
        f"variant      {doc['variant']} ({doc['tag']}; weights: "
        f"{'RANDOM (explicitly configured)' if weights.get('random') else weights.get('source')})",
        f"build        {doc['quant']}: {doc['precision']} on {doc['runtime']} "
        f"({doc['runtime_package']['package']} {doc['runtime_package']['version']}), model file {doc['model']}",
        f"cpu          made for {cpu['target']}, requires {cpu['requires']}"
        + (f" and {' or '.join(cpu['requires_flags'])}" if cpu.get("requires_flags") else "")
        + f" ({cpu['why']}); accuracy measured on {cpu.get('checked_isa', 'unrecorded')} kernels"
        + (f" (its {doc['precision']} outputs differ on other kernels)" if cpu.get("isa_sensitive") else ""),
        f"input        uint8 NHWC {doc['preprocess']['input_size'][1]}x{doc['preprocess']['input_size'][2]}, "
        f"resize {doc['preprocess']['resize_size']} {doc['preprocess']['interpolation']}, centre crop "
        f"({doc['preprocessing']['images_per_s_one_thread']:.0f} images/s on one thread, not in the speed below)",
        f"accuracy     {ev['state']} against the budget: top-1 {interval_text(ev['top1'])} %, top-5 "
        f"{interval_text(ev['top5'])} %, agreement with fp32 {interval_text(ev['agreement'])} %, top-1 loss "
        f"{interval_text(ev['top1_loss'], digits=2)} pt (95%, {ev['images']} images of {acc['dataset']})",
        f"speed        {speed['images_per_s']:.1f} images/s, p90 latency {speed['latency_p90_ms']:.2f} ms "
        f"({speed['objective']} objective: {speed['mode']} mode, batch {speed['batch']}, {speed['threads']} "
        f"threads, as effzoo runs it)" + (f"; speed_over_ort_fp32 {over[0]:.2f} [{over[1]:.2f}, {over[2]:.2f}]" if over else ""),
        f"measured on  {measured['model']} (flags: {' '.join(measured['flags'])}), a race of {speed['rounds']} "
        f"rounds",
        f"classes      {len(doc['classes'])}",
    ]
    if acc.get("note"):
        lines.append(f"note         {acc['note']}")
    lines += [f"this cpu     {n}" for n in doc.get("cpu_notes", [])]
    passed = doc["decision"]["passed_over"] | doc.get("left_out", {})
    if passed:
        lines.append("passed over  " + "\n             ".join(f"{q}: {w}" for q, w in passed.items()))
    return lines


def cmd_info(a: argparse.Namespace) -> None:
    manifest = Path(a.deploy_dir) / "model.json"
    if not manifest.is_file():
        raise ZooError(f"{manifest}: not found; a deploy folder holds model.json (snakemake deploy/<variant>)")
    print("\n".join(describe(read_json(manifest, "deploy"))))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="effzoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"effzoo {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("classify", help="top-k class names and probabilities of images")
    c.add_argument("deploy_dir", help="a deploy folder (deploy/<variant>)")
    c.add_argument("images", nargs="+", help="image files")
    c.add_argument("--topk", type=int, default=None, help="classes to print per image (default 5)")
    c.add_argument("--batch", type=int, default=None,
                   help="images per inference call, bounding memory (default: the batch its speed was measured at)")
    c.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: those its speed was measured with)")
    c.set_defaults(func=cmd_classify)
    i = sub.add_parser("info", help="what a deploy folder holds: build, CPU, accuracy, speed")
    i.add_argument("deploy_dir")
    i.set_defaults(func=cmd_info)
    return ap


def main(argv=None) -> int:
    def run(args):
        a = parser().parse_args(args)
        a.func(a)
    try:
        return run_main(run, argv)
    except BrokenPipeError:   # output piped into a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

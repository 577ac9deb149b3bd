"""Whether a build's outputs depend on the kernel ISA: each build predicted twice over the same images (at the
precision its build.json records), once as the runtime picks its kernels and once with AMX refused, so that int8
falls back to AVX-512 VNNI and bf16 to AVX512_BF16.

AMX is refused by preloading a small shim (compiled here with cc) that fails the kernel's AMX permission request
(arch_prctl ARCH_REQ_XCOMP_PERM), which ONNX Runtime's MLAS and OpenVINO's oneDNN both make before they use AMX.
Prints per build: the largest logit difference, the images whose top-1 changed, and both runs' inference time.
Only meaningful on a CPU with AMX (flags amx_int8 amx_tile amx_bf16); elsewhere both runs use the same kernels.

usage: python bench/isa_numerics.py vacc/tf_efficientnet_lite1-int8_max/model.onnx \
           vacc/tf_efficientnet_lite1-ov_int8_max/model.xml ... --shards npz/<size>/shard-00000.npz [...] \
           [--images 250] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
long syscall(long n, ...) {
  va_list ap; va_start(ap, n);
  long a[6]; for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (n == SYS_arch_prctl && a[0] == 0x1023) {   /* ARCH_REQ_XCOMP_PERM: AMX tile data */
    const char *log = getenv("NOAMX_LOG");
    if (log) { FILE *f = fopen(log, "a"); if (f) { fputs("refused\n", f); fclose(f); } }
    errno = EPERM; return -1;
  }
  static long (*real)(long, ...) = 0;
  if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""


def noamx_shim(directory: str) -> str:
    """Compile the shim that refuses AMX into `directory`; returns the .so path to preload (LD_PRELOAD)."""
    src, shim = Path(directory) / "noamx.c", str(Path(directory) / "noamx.so")
    src.write_text(SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", shim, str(src), "-ldl"], check=True)
    return shim


def predict(model: str, shards: list[str], images: int, threads: int, out: str) -> None:
    """Child: the build's logits over the first `images` images of the shards, saved to `out`; prints the seconds."""
    from effzoo import shard_io
    from effzoo.common import precision_of
    from effzoo.runtime import open_build

    batches, n = [], 0
    for x, _, _ in shard_io.iter_shards(shards, 16):
        batches.append(x[:images - n])
        n += len(batches[-1])
        if n >= images:
            break
    built = Path(model).with_name("build.json")
    precision = precision_of(json.loads(built.read_text())) if built.exists() else "f32"
    run, _ = open_build(model, threads, precision=precision)
    run(batches[0])   # warm-up
    t0 = time.perf_counter()
    logits = np.concatenate([run(x)[0] for x in batches])
    np.save(out, logits)
    print(json.dumps({"s": time.perf_counter() - t0, "images": len(logits)}))


def child(model: str, a, out: str, shim: str | None, log: str) -> dict:
    env = {**os.environ, "NOAMX_LOG": log}
    if shim:
        env["LD_PRELOAD"] = shim
    cmd = [sys.executable, __file__, "--child", out, "--shards", *a.shards, "--images", str(a.images),
           "--threads", str(a.threads), model]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{model}: prediction failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model.onnx or model.xml of the builds")
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--images", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return predict(a.models[0], a.shards, a.images, a.threads, a.child)
    from effzoo.cpu_target import cpu_flags, kernel_isa

    flags = cpu_flags()
    shown = sorted(flags & {"avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile"})
    print(f"CPU: {kernel_isa(flags)} kernels (flags: {' '.join(shown)})")
    with tempfile.TemporaryDirectory() as td:
        shim = noamx_shim(td)
        print(f"{'build':60} {'max |dlogit|':>12} {'top-1 changed':>14} {'s as is':>8} {'s no AMX':>9} AMX refused")
        for model in a.models:
            log = str(Path(td) / "refused.log")
            base = child(model, a, str(Path(td) / "a.npy"), None, log)
            vnni = child(model, a, str(Path(td) / "b.npy"), shim, log)
            refused = Path(log).exists()
            Path(log).unlink(missing_ok=True)
            x, y = np.load(Path(td) / "a.npy"), np.load(Path(td) / "b.npy")
            changed = int((x.argmax(1) != y.argmax(1)).sum())
            print(f"{model:60} {float(np.abs(x - y).max()):12.5f} {changed:>7} of {len(x):<4} {base['s']:8.2f} "
                  f"{vnni['s']:9.2f} {'yes' if refused else 'no (never asked)'}")


if __name__ == "__main__":
    main()

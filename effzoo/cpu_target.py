"""The CPU a build is made for, what it needs of the CPU that runs it, and the check where it runs.

Kinds, each including the one before: avx2 < avx512 < vnni (AVX512-VNNI, AVX-VNNI or AMX int8 dot products).
A build's `cpu_target` (option; `auto` = the kind of the machine that builds) decides its int8 numerics: plain
8-bit u8s8 weights are exact only with VNNI (without it ONNX Runtime's and oneDNN's u8s8 kernels add pairs of
products in int16 and saturate), so an int8 build for a vnni target *requires* VNNI, while builds for avx512 or
avx2 targets (7-bit weights where they would saturate, exact uint8 elsewhere) and float builds run correctly on
any kind. predict and benchmark compare the running CPU with what the build requires; `on_cpu_mismatch` (error
or warn) decides whether the step stops.

Within a kind, the int8 kernels differ by instruction set (`kernel_isa`: amx, avx512_vnni, ...). ONNX Runtime's
int8 outputs are bit-identical between AMX and AVX-512 VNNI (measured), but OpenVINO's are not (oneDNN's AMX and
VNNI kernels moved top-1 on 2.4% of images for one lite1 build). So a build records the ISA its accuracy record was
measured on (`checked_isa`) and whether its outputs follow the ISA (`isa_sensitive`: OpenVINO int8); where they
run on another ISA, the check says so and warns: the results are the build's numerics on that ISA, not those it
was checked with.

bf16 is orthogonal to the kinds (VNNI CPUs without bf16 exist): a bf16 build (OpenVINO at bf16 inference
precision) records `requires_flags` (avx512_bf16 or amx_bf16) beside its kind. Without them OpenVINO computes a
bf16 request at f32 (AVX2) or emulates bf16 slowly (AVX-512), and says neither, so the check reads the flags, never
the precision a compiled model reports. Its mismatch policy is `skip`: predict, benchmark and the race record why
and run nothing; effzoo.load stops. Standard library only.
"""
from __future__ import annotations

from pathlib import Path

from effzoo.common import LOG, ZooError

KINDS = ("avx2", "avx512", "vnni")
ANY = "any"   # what a build with no CPU-specific numerics requires: float builds, int8 builds that cannot saturate
UNKNOWN = "unknown"   # a CPU whose flags cannot be read (no /proc/cpuinfo: not Linux, or another architecture)
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # the bf16 dot products OpenVINO's CPU plugin computes natively
REPORTED_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or 'unknown CPU'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_flags() -> set[str]:
    """Flags of this machine's CPU (/proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def cpu_kind(flags: set[str] | None = None) -> str:
    """The kind (KINDS) of a CPU with these flags (default: this machine's); 'other' below avx2, 'unknown' when there
    are no flags to read."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return UNKNOWN
    if flags & VNNI_FLAGS:
        return "vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


def kernel_isa(flags: set[str] | None = None) -> str:
    """The widest int8 instruction set the runtimes' kernels use on a CPU with these flags (default: this machine's):
    amx, avx512_vnni, avx_vnni, avx512, avx2, other; 'unknown' when there are no flags to read."""
    flags = cpu_flags() if flags is None else flags
    if {"amx_int8", "amx_tile"} <= flags:
        return "amx"
    return next((isa for isa in ("avx512_vnni", "avx_vnni") if isa in flags), None) or cpu_kind(flags)


def bf16_isa(flags: set[str] | None = None) -> str | None:
    """The bf16 instruction set a CPU with these flags computes natively (amx_bf16, avx512_bf16), or None."""
    flags = cpu_flags() if flags is None else flags
    return next((isa for isa in BF16_FLAGS if isa in flags), None)


def running_isa(cpu: dict) -> str:
    """The kernel ISA that decides a build's outputs on this machine: the bf16 ISA for a build that requires bf16
    flags ('none' without them), else the int8 kernel_isa."""
    return (bf16_isa() or "none") if cpu.get("requires_flags") else kernel_isa()


def resolve(target: str) -> str:
    """A cpu_target option as a kind: 'auto' is the kind of this (the building) machine."""
    if target == "auto":
        return cpu_kind()
    if target not in KINDS:
        raise ZooError(f"cpu_target {target!r}: expected auto or one of {', '.join(KINDS)}")
    return target


def covers(running: str, required: str) -> bool:
    """Whether a CPU of kind `running` has everything a build that requires `required` needs (any CPU runs a build
    that requires 'any'; an unknown CPU runs nothing that requires more)."""
    if required == ANY:
        return True
    return running in KINDS and KINDS.index(running) >= KINDS.index(required)


def lacking_flags(cpu: dict, flags: set[str] | None = None) -> list[str]:
    """The flags a build requires (build.json cpu.requires_flags, any one of them) that a CPU with these flags
    (default: this machine's) lacks: all of them when it has none, else []."""
    need = cpu.get("requires_flags") or []
    flags = cpu_flags() if flags is None else flags
    return [] if not need or set(need) & flags else list(need)


def check(build: dict, what: str, running: str | None = None, skippable: bool = False) -> dict:
    """Compare the running CPU with what a build requires (build.json 'cpu': a kind, and for bf16 builds flags);
    on a CPU that lacks it: stop with a clear error (on_cpu_mismatch: error, or skip where the caller cannot
    skip), warn and run (warn), or return the record with 'skipped', the reason, for the caller to run nothing
    (skip). Returns the record the step writes."""
    cpu = build["cpu"]
    running = running or cpu_kind()
    lacking = lacking_flags(cpu)
    ok = covers(running, cpu["requires"]) and not lacking
    record = {"running": running, "running_isa": running_isa(cpu), "target": cpu["target"],
              "requires": cpu["requires"], **({"requires_flags": cpu["requires_flags"]} if lacking else {}), "ok": ok}
    if ok:
        return {**record, **isa_note(cpu, record["running_isa"], what)}
    if lacking:
        message = (f"{what}: requires {' or '.join(lacking)} ({cpu['why']}), and this CPU has neither: it would run "
                   f"emulated or at another precision, so it does not run here")
    else:
        this = ("this CPU's kind could not be read (no flags in /proc/cpuinfo)" if running == UNKNOWN
                else f"this CPU is {running}")
        message = (f"{what}: built for a {cpu['target']} CPU and requires {cpu['requires']} ({cpu['why']}), but "
                   f"{this}: its results here would not be the build's. Rebuild it for this CPU (quant mode option "
                   f"cpu_target: avx2, which runs exactly on any CPU, or auto on a machine of this kind)")
    if cpu["on_mismatch"] == "skip" and skippable:
        LOG.warning("%s", message)
        return {**record, "skipped": message}
    if cpu["on_mismatch"] in ("error", "skip"):
        raise ZooError(message + ("; or set on_cpu_mismatch: warn to run it anyway" if not lacking else ""))
    LOG.warning("%s", message)
    return {**record, "warning": message}


def isa_note(cpu: dict, running_isa: str, what: str) -> dict:
    """{'isa_note': ...} (and a warning) when a build whose outputs follow the kernel ISA runs on another ISA than
    the one its accuracy record was measured on; else {}."""
    checked = cpu.get("checked_isa")   # None: a bf16 build made where bf16 does not run has no record yet
    if not cpu.get("isa_sensitive") or checked is None or running_isa == checked:
        return {}
    note = (f"{what}: its accuracy record was measured on {checked} kernels and it runs here on {running_isa} "
            f"kernels, whose results differ from them on this runtime (not the same outputs, image for image); "
            f"predict on this CPU to measure it here")
    LOG.warning("%s", note)
    return {"isa_note": note}

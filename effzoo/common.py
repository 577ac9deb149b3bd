"""Shared helpers of the library and the steps: atomic writes, hashing, JSON, logging, errors."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from glob import escape as glob_escape
from pathlib import Path

LOG = logging.getLogger("effzoo")


class ZooError(RuntimeError):
    """A user-facing error: its message names the file, key or value and says what to do."""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr (Snakemake redirects it into the rule's log file)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (a missing file is a ZooError naming it)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    break
                h.update(block)
    except FileNotFoundError:
        raise ZooError(f"{path}: file not found") from None
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """What a manifest records about a file it describes: path, sha256 and size."""
    return {"path": str(path), "sha256": sha256_file(path), "size_mb": round(os.path.getsize(path) / 1e6, 3)}


def verify_file(path: str | os.PathLike, expected_sha256: str, recorded_in: str | os.PathLike) -> None:
    """Check a step's input against the sha256 its manifest recorded when it was written; a clear error naming
    the file and how to rebuild it otherwise (a flipped byte never reaches a result)."""
    got = sha256_file(path)
    if got != expected_sha256:
        raise ZooError(f"{path}: its sha256 {got[:16]}... does not match {expected_sha256[:16]}... recorded in "
                       f"{recorded_in} when it was written: the file was changed or damaged. Rebuild it: delete it "
                       f"and run snakemake again (or `snakemake --forcerun` the rule that makes it)")


def verify_files(files: dict, folder: str | os.PathLike, recorded_in: str | os.PathLike) -> None:
    """verify_file for every {file name: record} of a manifest, the files lying in `folder`."""
    for name, rec in files.items():
        verify_file(Path(folder) / name, rec["sha256"], recorded_in)


def remove_leftovers(path: str | os.PathLike) -> None:
    """Remove what an interrupted atomic write of `path` left beside it (hidden .tmp-<name>.* files or folders)."""
    path = Path(path)
    for left in path.parent.glob(f".tmp-{glob_escape(path.name)}.*"):
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash (or SIGKILL) leaves at most a hidden ``.tmp-<name>.*`` file, never a complete-looking target; the next
    write of the same target removes such leftovers (one writer per target: Snakemake runs one job per output).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically, pretty-printed with sorted keys."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


REBUILD = "rebuild it: delete it and run snakemake again"
# The fields that the steps read from each kind of manifest (a.b: field b of field a): a file without one is
# damaged, or was written by another version, and is named as such instead of failing deep inside a step.
MANIFEST_FIELDS = {
    "export": ("onnx", "weights", "tag"),
    "spec": ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "resize_size"),
    "calibration": ("prepped", "stats", "files"),
    "build": ("quant", "kind", "options", "details", "files", "model", "cpu", "input", "preprocess", "weights", "tag"),
    "predict": ("predictions", "cpu_check"),
    "perf": ("results", "deploy_mode", "batch1_latency_ms", "best_throughput_ips", "best_throughput_at", "cpu",
             "cpu_flags", "warnings"),
    "metrics": ("variant", "results", "dataset", "random_weights", "weights", "input_size", "params_m", "gflops",
                "flops_convention"),
    "race": ("variant", "objective", "batch", "threads", "rounds", "ranked_on", "builds", "decision", "cpu",
             "preprocessing", "left_out", "accuracy"),
    "deploy": ("variant", "quant", "runtime", "runtime_package.package", "runtime_package.version", "precision",
               "model", "files", "cpu", "preprocess", "preprocessing", "classes", "accuracy.evidence",
               "speed.objective", "speed.mode", "speed.batch", "speed.threads", "speed.images_per_s", "weights",
               "tag"),
}


def has_field(doc, dotted: str) -> bool:
    """Whether a JSON document holds a (dotted, a.b) field."""
    for key in dotted.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return False
        doc = doc[key]
    return True


# The fields of a record a step wrote without running the build (its CPU check said skip: `not_run`, the reason).
NOT_RUN_FIELDS = {"perf": ("not_run", "cpu", "cpu_flags", "cpu_check")}


def read_json(path: str | os.PathLike, kind: str | None = None):
    """Read JSON, naming the file in the error when it is missing or unreadable; with `kind` (MANIFEST_FIELDS),
    also when a field the steps read is missing."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ZooError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: not valid JSON ({e}): the file is damaged; {REBUILD}") from None
    if kind is not None:
        fields = NOT_RUN_FIELDS.get(kind) if isinstance(doc, dict) and "not_run" in doc else None
        missing = [k for k in fields or MANIFEST_FIELDS[kind] if not has_field(doc, k)]
        if missing:
            raise ZooError(f"{path}: not a complete {kind} manifest (no {', '.join(missing)}): the file is damaged "
                           f"or was written by another version of effzoo; {REBUILD}")
    return doc


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a text file (e.g. class names), naming the file when it is missing or not UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ZooError(f"{path}: file not found ({what})") from None
    except UnicodeDecodeError as e:
        raise ZooError(f"{path}: not UTF-8 text ({what}: {e}): the file is damaged; {REBUILD}") from None


def run_main(main, argv=None) -> int:
    """Run a CLI main(); print ZooError as a one-line error and exit 2."""
    setup_logging()
    try:
        main(argv)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class Progress:
    """Log progress with rate and ETA at most every `every_s` seconds."""

    def __init__(self, total: int, what: str, every_s: float = 10.0):
        self.total, self.what, self.every_s = total, what, every_s
        self.t0 = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            el = now - self.t0
            rate = self.done / el if el > 0 else float("inf")
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            LOG.info("%s: %d/%d (%.1f/s, elapsed %.0fs, ETA %.0fs)", self.what, self.done, self.total, rate, el, eta)


def precision_of(build: dict) -> str:
    """The inference precision a build runs at: model.json's inference_precision, or build.json's
    details.inference_precision (f32 where absent)."""
    return build.get("inference_precision") or build.get("details", {}).get("inference_precision", "f32")

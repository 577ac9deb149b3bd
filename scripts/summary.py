"""The model table: reports/summary.md, reports/summary.csv and an accuracy-vs-throughput plot.

One row per variant (the vendor table: model, top-1, top-5, GFLOPs, params (M), input size, from the fp32
build) extended with every quant mode's top-1, agreement with fp32 and throughput (best batch, images/s).
Rows from random weights are marked RANDOM.

CLI: python -m summary --metrics metrics/a.json metrics/b.json --md reports/summary.md \
        --csv reports/summary.csv --plot reports/accuracy_vs_throughput.png
"""
from __future__ import annotations

import argparse
import csv
import io

from zoo_common import atomic_path, read_json, run_main

VENDOR_COLUMNS = ["model", "weights", "top1", "top5", "gflops", "params_m", "input_size"]


def within_budget(q: str, results: dict, budget: dict) -> bool:
    """Whether a build keeps the accuracy budget against the fp32 build: top-1 agreement >= min_agreement and a
    top-1 loss of at most max_top1_loss (fp32 itself always does)."""
    r, ref = results[q], results.get("fp32")
    if q == "fp32":
        return True
    agree = r.get("top1_agreement_with_fp32")
    return (ref is not None and agree is not None and agree >= budget["min_agreement"]
            and ref["top1"] - r["top1"] <= budget["max_top1_loss"] + 1e-12)


def fastest_build(results: dict, budget: dict) -> tuple[str, float] | None:
    """The quant mode with the highest measured throughput among those within the accuracy budget; None when no
    mode was benchmarked."""
    ok = {q: r["best_throughput_ips"] for q, r in results.items() if r.get("best_throughput_ips")
          and within_budget(q, results, budget)}
    if not ok:
        return None
    q = max(ok, key=ok.get)
    return q, ok[q]


def slower_than_fp32(metrics: list[dict]) -> list[str]:
    """'variant mode (0.81x)' for every build the benchmark measured no faster than the fp32 build of its own
    runtime (of the reference fp32 build where its runtime has none)."""
    out = []
    for m in metrics:
        for q, r in m["results"].items():
            if "runtime_fp32" in r:
                speed = r.get("speedup_vs_runtime_fp32")
            else:  # a runtime's own fp32 build is its reference, not slower than itself
                speed = None if r.get("kind") == "fp32" else r.get("speedup_vs_fp32")
            if speed is not None and speed <= 1.0:
                out.append(f"{m['variant']} {q} ({speed:.2f}x)")
    return out


def budget_not_met(metrics: list[dict]) -> list[str]:
    """'variant mode (0.982 on 100)' for every int8 build whose accuracy budget search reached its cap."""
    return [f"{m['variant']} {q} ({r['accuracy_budget']['final_agreement']:.3f} on "
            f"{r['accuracy_budget']['split_images']} split images)"
            for m in metrics for q, r in m["results"].items()
            if r.get("accuracy_budget", {}).get("status") == "cap_reached"]


def rows_from(metrics: list[dict], budget: dict) -> tuple[list[str], list[dict]]:
    """Table columns and rows (one per variant)."""
    modes = []
    for m in metrics:
        for q in m["results"]:
            if q not in modes:
                modes.append(q)
    modes.sort(key=lambda q: (q != "fp32", q))
    cols = list(VENDOR_COLUMNS) + ["fastest_build", "fastest_runtime", "fastest_ips"]
    for q in modes:
        cols += [f"{q}_top1"] + ([f"{q}_agree_fp32"] if q != "fp32" else []) + [f"{q}_ips"]
    rows = []
    for m in metrics:
        ref = m["results"].get("fp32") or next(iter(m["results"].values()))
        row = {"model": m["variant"], "weights": "RANDOM" if m["random_weights"] else m["weights"]["source"],
               "top1": round(100 * ref["top1"], 3), "top5": round(100 * ref["top5"], 3), "gflops": m["gflops"],
               "params_m": m["params_m"], "input_size": m["input_size"][1]}
        best = fastest_build(m["results"], budget)
        row["fastest_build"], row["fastest_ips"] = (best[0], round(best[1], 1)) if best else ("", "")
        row["fastest_runtime"] = m["results"][best[0]].get("runtime", "") if best else ""
        for q in modes:
            r = m["results"].get(q)
            if r is None:
                continue
            row[f"{q}_top1"] = round(100 * r["top1"], 3)
            agree = r.get("top1_agreement_with_fp32")
            if q != "fp32":
                row[f"{q}_agree_fp32"] = "" if agree is None else round(100 * agree, 2)
            ips = r.get("best_throughput_ips")
            row[f"{q}_ips"] = "" if ips is None else round(ips, 1)
        rows.append(row)
    return cols, rows


def to_markdown(cols: list[str], rows: list[dict], notes: list[str]) -> str:
    out = io.StringIO()
    out.write("# Model table\n\nTop-1/top-5 in %, from the fp32 build; per quant mode: top-1 (%), top-1 "
              "agreement with fp32 (%), best throughput (images/s, CPU, on the build's runtime).\n\n")
    out.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
    for r in rows:
        out.write("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n")
    out.write("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return out.getvalue()


def text_table(metrics: list[dict], order: list[str]) -> str:
    """A plain-text result table (one row per variant and quant mode, modes in `order` first) for the console."""
    head = ("variant", "quant", "runtime", "top1", "top5", "agree_fp32", "split_agree", "speed_vs_fp32", "images", "MB",
            "params_M", "GFLOPs", "size", "weights")
    rows = []
    for m in metrics:
        for q in [q for q in order if q in m["results"]] + sorted(set(m["results"]) - set(order)):
            r = m["results"][q]
            agree, speed = r.get("top1_agreement_with_fp32"), r.get("speedup_vs_fp32")
            split = r.get("split_agreement_with_fp32")
            rows.append((m["variant"], q, r.get("runtime", "-"), f"{r['top1']:.4f}", f"{r['top5']:.4f}",
                         "-" if agree is None else f"{agree:.3f}", "-" if split is None else f"{split:.3f}",
                         "-" if speed is None else f"{speed:.2f}x",
                         str(r["images"]), f"{r['model_size_mb']:.1f}", f"{m['params_m']:.2f}", f"{m['gflops']:.3f}",
                         str(m["input_size"][1]), "RANDOM" if m["random_weights"] else m["weights"]["source"]))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    slow = slower_than_fp32(metrics)
    if slow:
        lines.append("not faster than fp32 on its runtime and this CPU (fp32 is recommended over it): "
                     + ", ".join(slow))
    short = budget_not_met(metrics)
    if short:
        lines.append("int8 accuracy budget not met within the promotion cap: " + ", ".join(short))
    return "\n".join(lines)


def throughput_ticks(lo: float, hi: float) -> list[float]:
    """Round tick values spanning [lo, hi] (a log axis within one decade has no labelled decade ticks)."""
    import matplotlib.ticker

    return [t for t in matplotlib.ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if t > 0]


def figure(metrics: list[dict]):
    """The accuracy-vs-throughput figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    markers = {"fp32": "o", "fp16": "s", "max": "^", "percentile": "v", "kl_divergence": "D"}
    for m in metrics:
        xs, ys = [], []
        for q, r in sorted(m["results"].items()):
            if r.get("best_throughput_ips") is None:
                continue
            x, y = r["best_throughput_ips"], 100 * r["top1"]
            xs.append(x)
            ys.append(y)
            shape = markers.get(r.get("calibration", {}).get("method") or r.get("kind"), "x")
            ax.scatter(x, y, marker=shape, label=f"{m['variant']} {q}"
                       + (" (RANDOM)" if m["random_weights"] else ""))
        ax.plot(xs, ys, lw=0.5, color="grey")
    ax.set_xscale("log")
    if ax.collections:  # something was benchmarked: round, labelled ticks over the data's range
        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(throughput_ticks(lo, hi)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(lo, hi)
    ax.set_xlabel("throughput, images/s (CPU, the build's runtime, best batch and mode)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot(metrics: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    fig = figure(metrics)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics", nargs="+", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--min-agreement", type=float, required=True, help="accuracy budget: top-1 agreement with fp32")
    ap.add_argument("--max-top1-loss", type=float, required=True, help="accuracy budget: top-1 loss against fp32")
    a = ap.parse_args(argv)
    budget = {"min_agreement": a.min_agreement, "max_top1_loss": a.max_top1_loss}
    metrics = [read_json(p) for p in a.metrics]
    cols, rows = rows_from(metrics, budget)
    notes = [f"dataset: {metrics[0]['dataset']['name']} ({metrics[0]['dataset']['images_scored']} images scored)",
             f"GFLOPs: {metrics[0]['flops_convention']}",
             "params: timm's parameter count (PyTorch), as the vendor table"]
    notes.append(f"fastest_build: the highest throughput among the builds within the accuracy budget (top-1 "
                 f"agreement with fp32 >= {a.min_agreement:.1%}, top-1 loss <= {100 * a.max_top1_loss:.1f} pt; "
                 f"fp32 included)")
    slow = slower_than_fp32(metrics)
    if slow:
        notes.append("not faster than the fp32 build of their runtime on this CPU (fp32 is recommended over "
                     "them): " + ", ".join(slow))
    short = budget_not_met(metrics)
    if short:
        notes.append("int8 accuracy budget (quant mode min_agreement on the calibration split) not met within "
                     "the promotion cap: " + ", ".join(short))
    if any(m["random_weights"] for m in metrics):
        notes.append("RANDOM: explicitly configured random weights; their accuracy is meaningless")
    with atomic_path(a.md, ".md") as tmp:
        tmp.write_text(to_markdown(cols, rows, notes))
    with atomic_path(a.csv, ".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    plot(metrics, a.plot)


if __name__ == "__main__":
    raise SystemExit(run_main(main))

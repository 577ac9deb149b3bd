"""The model table: reports/summary.md, summary.html, summary.csv and an accuracy-vs-throughput plot.

First the model table, one row per variant in the vendor's shape (input size, params (M), GFLOPs, fp32 top-1 and
top-5), with the fastest build within the deploy budget (effzoo.budget): its runtime, top-1, agreement with fp32,
images/s and speed over PyTorch eager. Then one row per build: runtime, precision, CPU target, top-1, agreement,
images/s and speed over the fp32 build of its runtime. summary.csv holds the same in long form (one row per
variant and build); summary.html the same tables for `snakemake --report`. Rows from random weights say RANDOM.

CLI: python -m summary --metrics metrics/a.json metrics/b.json --md reports/summary.md \
        --html reports/summary.html --csv reports/summary.csv --plot reports/accuracy_vs_throughput.png \
        --min-agreement 0.98 --max-top1-loss 0.005 --speed-tolerance 0.15
"""
from __future__ import annotations

import argparse
import csv
import html

from effzoo.budget import fastest_build, slower_than_fp32, speed_over_fp32, split_budget_notes, within_budget
from effzoo.common import ZooError, atomic_path, read_json

# The model table, the vendor's shape: one row per variant, at most 12 columns.
MODEL_COLUMNS = {
    "variant": "variant", "weights": "weights", "input": "input", "params_m": "params (M)", "gflops": "GFLOPs",
    "fp32_top1": "fp32 top-1", "fp32_top5": "fp32 top-5", "fastest_build": "fastest build (runtime)",
    "fastest_top1": "its top-1", "fastest_agreement": "its agreement", "fastest_ips": "its images/s",
    "fastest_vs_torch": "its x PyTorch",
}
# The build table: one row per variant and build.
BUILD_COLUMNS = {
    "variant": "variant", "build": "build", "runtime": "runtime", "precision": "precision",
    "cpu_target": "CPU target", "top1": "top-1", "top5": "top-5", "agreement": "agreement",
    "ips": "images/s", "vs_fp32": "x fp32", "within_budget": "within budget",
}


def _pct(x) -> str | float:
    return "" if x is None else round(100 * x, 2)


def model_rows(metrics: list[dict], budget: dict) -> list[dict]:
    """One row per variant (MODEL_COLUMNS): the vendor's columns from the fp32 build, then the fastest build within
    the deploy budget."""
    rows = []
    for m in metrics:
        ref = m["results"]["fp32"]
        row = {"variant": m["variant"], "weights": "RANDOM" if m["random_weights"] else m["weights"]["source"],
               "input": m["input_size"][1], "params_m": m["params_m"], "gflops": m["gflops"],
               "fp32_top1": _pct(ref["top1"]), "fp32_top5": _pct(ref["top5"])}
        best = fastest_build(m["results"], budget, m.get("quant_order"))
        if best:
            r = m["results"][best[0]]
            row.update(fastest_build=f"{best[0]} ({r['runtime']})", fastest_top1=_pct(r["top1"]),
                       fastest_agreement=_pct(r.get("top1_agreement_with_fp32", 1.0)),
                       fastest_ips=round(r["speed"]["images_per_s"], 1),
                       fastest_vs_torch=round(r["speed"]["vs_torch_eager"], 2))
        rows.append(row)
    return rows


def build_rows(metrics: list[dict], budget: dict) -> list[dict]:
    """One row per variant and build (BUILD_COLUMNS), fp32 first."""
    rows = []
    for m in metrics:
        for q in sorted(m["results"], key=lambda q: (q != "fp32", q)):
            r = m["results"][q]
            ips, vs_fp32 = (r.get("speed") or {}).get("images_per_s"), speed_over_fp32(r)
            rows.append({"variant": m["variant"], "build": q, "runtime": r["runtime"], "precision": r["kind"],
                         "cpu_target": r["cpu"]["target"], "top1": _pct(r["top1"]), "top5": _pct(r["top5"]),
                         "agreement": _pct(r.get("top1_agreement_with_fp32", 1.0 if q == "fp32" else None)),
                         "ips": "" if ips is None else round(ips, 1),
                         "vs_fp32": "" if vs_fp32 is None else round(vs_fp32, 2),
                         "within_budget": "yes" if within_budget(q, m["results"], budget) else "no"})
    return rows


def long_rows(metrics: list[dict], budget: dict) -> list[dict]:
    """summary.csv: one row per variant and build, the variant's model-table columns beside the build's."""
    by_variant = {r["variant"]: r for r in model_rows(metrics, budget)}
    return [{**{f"variant_{k}" if k != "variant" else k: v for k, v in by_variant[b["variant"]].items()}, **b}
            for b in build_rows(metrics, budget)]


def markdown_table(columns: dict, rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(columns: dict, rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MODEL_INTRO = ("Top-1/top-5 in % from the fp32 build. The fastest build is the fastest within the deploy budget in the "
               "mode the deployed model runs in (latency mode, the largest benchmark batch); builds within the "
               "measured noise of it are ties, broken by agreement. x PyTorch is its speed over timm's PyTorch eager "
               "model, timed round by round beside it in the same benchmark job.")
BUILD_INTRO = ("Every build: top-1/top-5 and top-1 agreement with the fp32 build in %, images/s in the deploy mode "
               "(CPU, the build's runtime), and its speed over the fp32 build of the same runtime (the ratio of their "
               "speeds over PyTorch eager, so drift between benchmark jobs cancels).")


def to_markdown(models: list[dict], builds: list[dict], notes: list[str]) -> str:
    return (f"# Model table\n\n{MODEL_INTRO}\n\n{markdown_table(MODEL_COLUMNS, models)}\n"
            f"## Builds\n\n{BUILD_INTRO}\n\n{markdown_table(BUILD_COLUMNS, builds)}\n"
            + "\n".join(f"- {n}" for n in notes) + "\n")


def to_html(models: list[dict], builds: list[dict], notes: list[str]) -> str:
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>effzoo model table</title><style>"
            "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
            "</style></head><body>"
            f"<h1>Model table</h1><p>{html.escape(MODEL_INTRO)}</p>{html_table(MODEL_COLUMNS, models)}"
            f"<h2>Builds</h2><p>{html.escape(BUILD_INTRO)}</p>{html_table(BUILD_COLUMNS, builds)}"
            f"<ul>{items}</ul></body></html>\n")


def evaluated_calibration_notes(metrics: list[dict]) -> list[str]:
    """A line per variant whose int8 builds were calibrated, and had their split budget searched, on images of
    the evaluated set (the vendor's default): their accuracy figures are then not held out."""
    return [f"{m['variant']}: the int8 builds were calibrated on the evaluated dataset (calibration.dataset), so "
            f"their ranges and split budget saw images that are also scored; set calibration.dataset to a separate "
            f"set for held-out figures" for m in metrics if m.get("calibration_on_evaluated_images")]


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
    lines += split_budget_notes(metrics) + evaluated_calibration_notes(metrics)
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
    markers = {"fp32": "o", "fp16": "s", "max": "^", "percentile": "v", "kl_divergence": "D", "mse": "P"}
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
    ap.add_argument("--csv", required=True, help="long form: one row per variant and build")
    ap.add_argument("--html", required=True, help="the two tables as an HTML page (in snakemake --report)")
    ap.add_argument("--plot", required=True)
    ap.add_argument("--min-agreement", type=float, required=True, help="accuracy budget: top-1 agreement with fp32")
    ap.add_argument("--max-top1-loss", type=float, required=True, help="accuracy budget: top-1 loss against fp32")
    ap.add_argument("--speed-tolerance", type=float, required=True, help="speeds within this fraction are ties")
    a = ap.parse_args(argv)
    budget = {"min_agreement": a.min_agreement, "max_top1_loss": a.max_top1_loss, "speed_tolerance": a.speed_tolerance}
    metrics = [read_json(p, "metrics") for p in a.metrics]
    missing = [p for p, m in zip(a.metrics, metrics) if "fp32" not in m["results"]]
    if missing:
        raise ZooError(f"{', '.join(missing)}: no fp32 build, the reference of every table figure; add fp32 to "
                       f"run_quant")
    models, builds = model_rows(metrics, budget), build_rows(metrics, budget)
    notes = [f"dataset: {metrics[0]['dataset']['name']} ({metrics[0]['dataset']['images_scored']} images scored)",
             f"GFLOPs: {metrics[0]['flops_convention']}",
             "params: timm's parameter count (PyTorch), as the vendor table"]
    notes.append(f"deploy budget: top-1 agreement with fp32 >= {a.min_agreement:.1%} and top-1 loss <= "
                 f"{100 * a.max_top1_loss:.1f} pt (fp32 always within); speeds within {a.speed_tolerance:.0%} of the "
                 f"fastest's are ties, chosen by accuracy, then run_quant order")
    slow = slower_than_fp32(metrics)
    if slow:
        notes.append("not faster than the fp32 build of their runtime on this CPU (fp32 is recommended over "
                     "them): " + ", ".join(slow))
    notes += split_budget_notes(metrics) + evaluated_calibration_notes(metrics)
    if any(m["random_weights"] for m in metrics):
        notes.append("RANDOM: explicitly configured random weights; their accuracy is meaningless")
    with atomic_path(a.md, ".md") as tmp:
        tmp.write_text(to_markdown(models, builds, notes))
    with atomic_path(a.html, ".html") as tmp:
        tmp.write_text(to_html(models, builds, notes))
    rows = long_rows(metrics, budget)
    with atomic_path(a.csv, ".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot(metrics, a.plot)

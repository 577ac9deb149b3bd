"""The model table: reports/summary.md, summary.html, summary.csv and an accuracy-vs-speed plot.

First the model table, one row per variant in the vendor's shape (input size, params (M), GFLOPs, fp32 top-1 and
top-5), with the build the variant's race chose for deploy/ (race/<variant>.json, effzoo.decision): its runtime,
top-1 and agreement with fp32 with their exact 95% intervals, images/s and speed over fp32 with its paired 95%
interval, both from the race. Then one row per build: runtime, precision, CPU target, top-1, top-5 and agreement
with their intervals, its accuracy state against the deploy budget, and its race figures (or why it was not raced).
summary.csv holds the same in long form (one row per variant and build); summary.html the same tables for
`snakemake --report`. Rows from random weights say RANDOM. Without races (benchmark.enabled: false) the speed
columns stay empty.

CLI: python -m summary --metrics metrics/a.json metrics/b.json [--races race/a.json race/b.json] \
        --md reports/summary.md --html reports/summary.html --csv reports/summary.csv \
        --plot reports/accuracy_vs_throughput.png
"""
from __future__ import annotations

import argparse
import csv
import html

from effzoo.budget import split_budget_notes
from effzoo.common import ZooError, atomic_path, read_json
from effzoo.evidence import interval_text

# The model table: one row per variant, at most 12 columns.
MODEL_COLUMNS = {
    "variant": "variant", "weights": "weights", "input": "input", "params_m": "params (M)", "gflops": "GFLOPs",
    "fp32_top1": "fp32 top-1 [95%]", "fp32_top5": "fp32 top-5", "deployed": "deployed build (runtime)",
    "deployed_top1": "its top-1 [95%]", "deployed_agreement": "its agreement [95%]", "deployed_ips": "its images/s",
    "deployed_vs_fp32": "its speed_over_ort_fp32 [95%]",
}
# The build table: one row per variant and build.
BUILD_COLUMNS = {
    "variant": "variant", "build": "build", "runtime": "runtime", "precision": "precision",
    "cpu_target": "CPU target", "top1": "top-1 [95%]", "top5": "top-5", "agreement": "agreement [95%]",
    "accuracy": "accuracy", "ips": "images/s", "vs_fp32": "speed_over_ort_fp32 [95%]", "race": "race",
}


def _pct(x) -> str | float:
    return "" if x is None else round(100 * x, 2)


def ratio_text(r: list[float] | None) -> str:
    """'1.52 [1.47, 1.58]' from [ratio, lower, upper]."""
    return "" if not r else f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"


def race_state(q: str, race: dict | None) -> str:
    """A build's place in its variant's race: deployed, leader, tied, slower, unresolved, or why not raced."""
    if race is None:
        return ""
    d = race["decision"]
    if q in race["left_out"]:
        return "not raced: " + race["left_out"][q]
    state = d["builds"][q]["speed_state"]
    return ("deployed" + (f" ({state})" if state != "leader" else " (fastest)")) if q == d["chosen"] else state


def model_rows(metrics: list[dict], races: dict) -> list[dict]:
    """One row per variant (MODEL_COLUMNS): the vendor's columns from the fp32 build, then the race's choice."""
    rows = []
    for m in metrics:
        ref = m["results"]["fp32"]["evidence"]
        row = {"variant": m["variant"], "weights": "RANDOM" if m["random_weights"] else m["weights"]["source"],
               "input": m["input_size"][1], "params_m": m["params_m"], "gflops": m["gflops"],
               "fp32_top1": interval_text(ref["top1"]), "fp32_top5": _pct(ref["top5"]["value"])}
        race = races.get(m["variant"])
        best = race["decision"].get("chosen") if race else None
        if best:
            r, ev = m["results"][best], m["results"][best]["evidence"]
            row.update(deployed=f"{best} ({r['runtime']})", deployed_top1=interval_text(ev["top1"]),
                       deployed_agreement=interval_text(ev["agreement"]),
                       deployed_ips=round(race["builds"][best]["images_per_s"], 1),
                       deployed_vs_fp32=ratio_text(race["builds"][best].get("speed_over_ort_fp32")))
        rows.append(row)
    return rows


def build_rows(metrics: list[dict], races: dict) -> list[dict]:
    """One row per variant and build (BUILD_COLUMNS), fp32 first."""
    rows = []
    for m in metrics:
        race = races.get(m["variant"])
        raced = race["builds"] if race else {}
        for q in sorted(m["results"], key=lambda q: (q != "fp32", q)):
            r = m["results"][q]
            if "not_run" in r:
                rows.append({"variant": m["variant"], "build": q, "runtime": r["runtime"], "precision": r["kind"],
                             "cpu_target": r["cpu"]["target"], "accuracy": "not run", "race": r["not_run"]})
                continue
            ev = r["evidence"]
            rows.append({"variant": m["variant"], "build": q, "runtime": r["runtime"], "precision": r["kind"],
                         "cpu_target": r["cpu"]["target"], "top1": interval_text(ev["top1"]),
                         "top5": _pct(ev["top5"]["value"]), "agreement": interval_text(ev["agreement"]),
                         "accuracy": ev["state"],
                         "ips": round(raced[q]["images_per_s"], 1) if q in raced else "",
                         "vs_fp32": ratio_text(raced.get(q, {}).get("speed_over_ort_fp32")), "race": race_state(q, race)})
    return rows


def long_rows(metrics: list[dict], races: dict) -> list[dict]:
    """summary.csv: one row per variant and build, the variant's model-table columns beside the build's."""
    by_variant = {r["variant"]: r for r in model_rows(metrics, races)}
    return [{**{f"variant_{k}" if k != "variant" else k: v for k, v in by_variant[b["variant"]].items()}, **b}
            for b in build_rows(metrics, races)]


def markdown_table(columns: dict, rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(columns: dict, rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MODEL_INTRO = ("Top-1/top-5 in % from the fp32 build, with exact (Clopper-Pearson) 95% intervals. The deployed build "
               "is the race's choice (race/<variant>.json): the fastest build the accuracy evidence allows, timed against "
               "the others round by round in one process; speed_over_ort_fp32 is its paired speed ratio to the ONNX "
               "Runtime fp32 build in that "
               "race, with its 95% interval. Speeds exclude preprocessing.")
BUILD_INTRO = ("Every build: top-1, top-5 and top-1 agreement with the fp32 build in % (exact 95% intervals), its "
               "accuracy state against the deploy budget (certified: the bounds are inside it; refuted: outside; "
               "unproven: neither), and its race: images/s in the deploy objective's mode, the paired speed ratio to "
               "the ONNX Runtime fp32 build (speed_over_ort_fp32) with its 95% interval, and where it stood (leader, "
               "tied, slower, or why it was not raced).")


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


def race_notes(races: dict) -> list[str]:
    """Per race: the objective, the CPU, what was chosen and how sure that is, and the builds confidently slower
    than the fp32 build of their own runtime."""
    out = []
    for v, race in races.items():
        d, cpu = race["decision"], race["cpu"]
        out.append(f"{v}: deployed {d['chosen']} from the {d['pool']}; race of {race['rounds']} rounds, "
                   f"{race['objective']} objective (batch {race['batch']}, {race['threads']} threads), ranked on "
                   f"{race['ranked_on']}, ties within {d['tolerance']:.0%} of the leader {d['leader']}; on "
                   f"{cpu['model']} ({cpu['kind']}; flags {' '.join(cpu['flags'])}); preprocessing (not in the "
                   f"speeds) {race['preprocessing']['images_per_s_one_thread']:.0f} images/s on one thread"
                   + (f"; {d['note']}" if d.get("note") else ""))
        slow = [f"{q} (speed_over_runtime_fp32 {ratio_text(b['speed_over_runtime_fp32']['ratio'])}, over "
                f"{b['speed_over_runtime_fp32']['build']})"
                for q, b in race["builds"].items() if b.get("speed_over_runtime_fp32")
                and b["speed_over_runtime_fp32"]["build"] != q and b["speed_over_runtime_fp32"]["ratio"][2] < 1.0]
        if slow:
            out.append(f"{v}: slower than the fp32 build of their runtime on this CPU (95% intervals): "
                       + ", ".join(slow))
        out += [f"{v}: {e['statement']}" for e in race.get("int8_payoff", {}).values() if "statement" in e]
        if any(b["kind"] == "fp16" for b in race["builds"].values()):
            out.append(f"{v}: fp16 is the vendor's build for accelerators; ONNX Runtime's CPU provider runs it slower "
                       f"than fp32 on every CPU kind measured (docs/results.md). The half precision CPUs compute is "
                       f"bf16 (ov_bf16), where the CPU has avx512_bf16 or amx_bf16")
    return out


def text_table(metrics: list[dict], order: list[str], races: dict | None = None) -> str:
    """A plain-text result table (one row per variant and quant mode, modes in `order` first) for the console."""
    races = races or {}
    head = ("variant", "quant", "runtime", "top1", "top5", "agree_fp32 [95%]", "split_agree", "speed_over_ort_fp32 [95%]",
            "accuracy", "images", "MB", "params_M", "GFLOPs", "size", "weights")
    rows = []
    for m in metrics:
        raced = races[m["variant"]]["builds"] if m["variant"] in races else {}
        for q in [q for q in order if q in m["results"]] + sorted(set(m["results"]) - set(order)):
            r = m["results"][q]
            if "not_run" in r:
                rows.append((m["variant"], q, r["runtime"], "not run", "-", "-", "-", "-", "not run", "0",
                             f"{r['model_size_mb']:.1f}", f"{m['params_m']:.2f}", f"{m['gflops']:.3f}",
                             str(m["input_size"][1]), "RANDOM" if m["random_weights"] else m["weights"]["source"]))
                continue
            ev, split = r["evidence"], r.get("split_agreement_with_fp32")
            rows.append((m["variant"], q, r.get("runtime", "-"), f"{r['top1']:.4f}", f"{r['top5']:.4f}",
                         interval_text(ev["agreement"]), "-" if split is None else f"{split:.3f}",
                         ratio_text(raced.get(q, {}).get("speed_over_ort_fp32")) or "-", ev["state"],
                         str(r["images"]), f"{r['model_size_mb']:.1f}", f"{m['params_m']:.2f}", f"{m['gflops']:.3f}",
                         str(m["input_size"][1]), "RANDOM" if m["random_weights"] else m["weights"]["source"]))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    lines += race_notes({v: races[v] for v in races if any(m["variant"] == v for m in metrics)})
    lines += [f"{m['variant']}: {q} not run: {r['not_run']}" for m in metrics for q, r in m["results"].items()
              if "not_run" in r]
    lines += split_budget_notes(metrics) + evaluated_calibration_notes(metrics)
    return "\n".join(lines)


def throughput_ticks(lo: float, hi: float) -> list[float]:
    """Round tick values spanning [lo, hi] (a log axis within one decade has no labelled decade ticks)."""
    import matplotlib.ticker

    return [t for t in matplotlib.ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if t > 0]


def plot_points(m: dict, race: dict) -> list[dict]:
    """The raced builds of a variant as plot points: speed in the objective's unit with its interval (the leader's
    median times the paired ratio's interval), top-1 in % with its exact interval."""
    d = race["decision"]
    lead = race["builds"][d["leader"]]
    points = []
    for q, b in race["builds"].items():
        r = d["builds"][q]["speed_over_leader"]
        if race["objective"] == "single_stream":   # latency: lower is faster, the ratio is of 1 / p90
            x, lo, hi = lead["latency_p90_ms"] / r[0], lead["latency_p90_ms"] / r[2], lead["latency_p90_ms"] / r[1]
        else:
            x, lo, hi = lead["images_per_s"] * r[0], lead["images_per_s"] * r[1], lead["images_per_s"] * r[2]
        ev = m["results"][q]["evidence"]["top1"]
        points.append({"build": q, "x": x, "x_err": (x - lo, hi - x), "y": 100 * ev["value"],
                       "y_err": (100 * (ev["value"] - ev["interval"][0]), 100 * (ev["interval"][1] - ev["value"])),
                       "deployed": q == d["chosen"], "kind": m["results"][q].get("calibration", {}).get("method")
                       or m["results"][q].get("kind")})
    return points


def figure(metrics: list[dict], races: dict):
    """The accuracy-vs-speed figure: every raced build with its intervals, the deployed one ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    markers = {"fp32": "o", "fp16": "s", "bf16": "h", "max": "^", "percentile": "v", "kl_divergence": "D", "mse": "P"}
    objective = "batch"
    for m in metrics:
        if m["variant"] not in races:
            continue
        objective = races[m["variant"]]["objective"]
        for pt in sorted(plot_points(m, races[m["variant"]]), key=lambda p: p["build"]):
            ax.errorbar(pt["x"], pt["y"], xerr=[[pt["x_err"][0]], [pt["x_err"][1]]],
                        yerr=[[pt["y_err"][0]], [pt["y_err"][1]]], fmt=markers.get(pt["kind"], "x"), capsize=2,
                        label=f"{m['variant']} {pt['build']}" + (" (RANDOM)" if m["random_weights"] else ""))
            if pt["deployed"]:
                ax.scatter(pt["x"], pt["y"], s=300, facecolors="none", edgecolors="black", linewidths=1.5,
                           label=f"{m['variant']}: deployed")
    ax.set_xscale("log")
    if ax.lines:  # something was raced: round, labelled ticks over the data's range
        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(throughput_ticks(lo, hi)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(lo, hi)
    ax.set_xlabel("p90 latency at batch 1, ms (the race; lower is faster)" if objective == "single_stream" else
                  "images/s in the race (latency mode, the deploy batch; preprocessing excluded)")
    ax.set_ylabel("top-1 (%), exact 95% interval")
    ax.set_title("Accuracy vs speed (95% intervals)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot(metrics: list[dict], races: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    fig = figure(metrics, races)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics", nargs="+", required=True)
    ap.add_argument("--races", nargs="+", default=[], help="race/<variant>.json: the decisions (none: no speeds)")
    ap.add_argument("--md", required=True)
    ap.add_argument("--csv", required=True, help="long form: one row per variant and build")
    ap.add_argument("--html", required=True, help="the two tables as an HTML page (in snakemake --report)")
    ap.add_argument("--plot", required=True)
    a = ap.parse_args(argv)
    metrics = [read_json(p, "metrics") for p in a.metrics]
    missing = [p for p, m in zip(a.metrics, metrics) if "fp32" not in m["results"]]
    if missing:
        raise ZooError(f"{', '.join(missing)}: no fp32 build, the reference of every table figure; add fp32 to "
                       f"run_quant")
    races = {r["variant"]: r for r in (read_json(p, "race") for p in a.races)}
    models, builds = model_rows(metrics, races), build_rows(metrics, races)
    budget = metrics[0]["results"]["fp32"]["evidence"]["budget"]
    notes = [f"dataset: {metrics[0]['dataset']['name']} ({metrics[0]['dataset']['images_scored']} images scored)",
             f"GFLOPs: {metrics[0]['flops_convention']}",
             "params: timm's parameter count (PyTorch), as the vendor table",
             f"deploy budget: top-1 agreement with fp32 >= {budget['min_agreement']:.1%} and top-1 loss <= "
             f"{100 * budget['max_top1_loss']:.1f} pt; certified where the 95% bounds are inside it (agreement: "
             f"Clopper-Pearson; loss: paired, from the discordant images), refuted where outside"]
    notes += race_notes(races) + split_budget_notes(metrics) + evaluated_calibration_notes(metrics)
    if any(m["random_weights"] for m in metrics):
        notes.append("RANDOM: explicitly configured random weights; their accuracy is meaningless")
    with atomic_path(a.md, ".md") as tmp:
        tmp.write_text(to_markdown(models, builds, notes))
    with atomic_path(a.html, ".html") as tmp:
        tmp.write_text(to_html(models, builds, notes))
    rows = long_rows(metrics, races)
    with atomic_path(a.csv, ".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot(metrics, races, a.plot)

"""``report.html`` for a simulation: plots (matplotlib, embedded as PNG) and tables, one file."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {
    "federated": "#1f77b4",
    "local_only": "#ff7f0e",
    "centralised": "#2ca02c",
    "flag_everything": "#999999",
}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def plot_rounds(m: dict[str, Any]) -> str:
    rounds = [r["round"] for r in m["rounds"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for key, label in (("f1", "F1"), ("far", "FAR"), ("mar", "MAR"), ("roc_auc", "ROC-AUC")):
        vals = [
            r["global"][key] if r["global"][key] is not None else float("nan") for r in m["rounds"]
        ]
        ax.plot(rounds, vals, marker="o", ms=3, label=label)
    for name in ("local_only", "centralised"):
        if name in m["comparison"]:
            ax.axhline(
                m["comparison"][name]["f1"],
                ls="--",
                lw=1,
                color=COLOURS[name],
                label=f"F1 {name.replace('_', '-')}",
            )
    ax.set_xlabel("round")
    ax.set_ylim(0, 1)
    ax.set_title("Global model on every device's held-out data")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_segments(m: dict[str, Any]) -> str:
    rounds = [r["round"] for r in m["rounds"]]
    segs = sorted(m["rounds"][-1]["per_segment"])
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    for s in segs:
        ax.plot(rounds, [r["per_segment"][s]["f1"] for r in m["rounds"]], marker="o", ms=3, label=s)
    ax.set_xlabel("round")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_title("F1 per device type (segment)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_comparison(m: dict[str, Any]) -> str:
    names = [
        n
        for n in ("federated", "local_only", "centralised", "flag_everything")
        if n in m["comparison"]
    ]
    keys = ["f1", "far", "mar"]
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [m["comparison"][n][k] for k in keys]
        ax.bar(
            [j + i * width for j in range(len(keys))],
            vals,
            width,
            label=n.replace("_", "-"),
            color=COLOURS[n],
        )
    ax.set_xticks(
        [j + width * (len(names) - 1) / 2 for j in range(len(keys))], [k.upper() for k in keys]
    )
    ax.set_ylim(0, 1)
    ax.set_title("Federated vs local-only vs centralised (same detector, same split)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def plot_bandwidth(m: dict[str, Any]) -> str:
    rounds = [r["round"] for r in m["rounds"]]
    up = [sum(r["bytes_up"].values()) / max(1, len(r["bytes_up"])) / 1024 for r in m["rounds"]]
    down = [
        sum(r["bytes_down"].values()) / max(1, len(r["bytes_down"])) / 1024 for r in m["rounds"]
    ]
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    ax.plot(rounds, up, marker="o", ms=3, label="up (device -> coordinator)")
    ax.plot(rounds, down, marker="o", ms=3, label="down (coordinator -> device)")
    ax.set_xlabel("round")
    ax.set_ylabel("KiB per device")
    ax.set_title("Bandwidth per device per round")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def security_section(m: dict[str, Any]) -> str:
    """Attackers, trust and privacy spending, when the run configured them."""
    last = m["rounds"][-1]
    parts: list[str] = []
    if "attackers" in last:
        attackers = last["attackers"]
        caught = [d for d in attackers if d in last.get("excluded", {})]
        honest_out = [d for d in last.get("excluded", {}) if d not in attackers]
        g = last["global_honest"]
        cfg = m["config"]
        attack = html.escape(str(cfg["attacks"]["name"]))
        rule = html.escape(str(cfg["robust"]["aggregator"]))
        trust_on = "on" if cfg["trust"]["enabled"] else "off"
        parts.append(
            f"<h2>Poisoning scenario</h2><p>Attack <b>{attack}</b> by {len(attackers)} of "
            f"{m['n_devices']} devices; defence: aggregator <b>{rule}</b>, trust {trust_on}. "
            f"In the last round {len(caught)} attackers and {len(honest_out)} honest devices "
            f"sat out. Honest devices: F1 {_fmt(g['f1'])}, FAR {_fmt(g['far'])}, "
            f"MAR {_fmt(g['mar'])}.</p>"
        )
        if "trust" in last:
            rows = "".join(
                f"<tr><td>{html.escape(d)}</td><td>{'attacker' if d in attackers else 'honest'}"
                f"</td><td>{_fmt(last['trust'][d])}</td><td>"
                f"{html.escape(last.get('excluded', {}).get(d, ''))}</td></tr>"
                for d in sorted(last["trust"], key=lambda d: last["trust"][d])[:15]
            )
            parts.append(
                "<table><tr><th>device (lowest trust first)</th><th>role</th>"
                f"<th>trust</th><th>why it sat out</th></tr>{rows}</table>"
            )
    if last.get("epsilon"):
        eps = list(last["epsilon"].values())
        p = m["config"]["privacy"]
        parts.append(
            f"<h2>Differential privacy</h2><p>Clip {p['clip_norm']}, noise multiplier "
            f"{p['noise_multiplier']} ({html.escape(str(p['noise']))}), delta {p['delta']}: "
            f"epsilon spent per device after {len(m['rounds'])} rounds: max {max(eps):.3f}, "
            f"mean {sum(eps) / len(eps):.3f}"
            + (f" (budget {p['epsilon_budget']})" if p["epsilon_budget"] else "")
            + ".</p>"
        )
    return "".join(parts)


def device_traffic(m: dict[str, Any]) -> dict[str, tuple[float, float, float, float]]:
    """Device -> (bytes up, bytes down per round it took part in; kB up, down per week)."""
    per_week = 7 * 24 * 3600 / m["bandwidth"]["round_period_s"]
    out: dict[str, tuple[float, float, float, float]] = {}
    for d in sorted({d for r in m["rounds"] for d in r["bytes_down"]}):
        ups = [r["bytes_up"].get(d, 0) for r in m["rounds"] if d in r["bytes_down"]]
        downs = [r["bytes_down"][d] for r in m["rounds"] if d in r["bytes_down"]]
        up, down = sum(ups) / len(ups), sum(downs) / len(downs)
        out[d] = (up, down, up * per_week / 1e3, down * per_week / 1e3)
    return out


def secagg_section(m: dict[str, Any]) -> str:
    """How secure aggregation and compression ran, when configured."""
    s = m["config"].get("secagg", {})
    if not s.get("enabled"):
        return ""
    c = m["config"].get("compression", {})
    groups = [len(r.get("secagg", {}).get("groups", [])) for r in m["rounds"]]
    failed = sum(r.get("secagg", {}).get("failed_groups", 0) for r in m["rounds"])
    size = s["group_size"] or "whole round"
    return (
        f"<h2>Secure aggregation</h2><p>SecAgg+ (field 2^{s['bits']}, group size {size}, "
        f"{max(groups, default=0)} group(s) a round, dropout injection {s['dropout_prob']}): "
        "the coordinator saw only group sums. "
        f"Groups that aborted over the run: {failed}. Compression: keep ratio "
        f"{c.get('keep_ratio', 1.0)} of the coordinates (shared per round"
        + (", error feedback" if c.get("error_feedback") else "")
        + ").</p>"
    )


def compression_section(m: dict[str, Any]) -> str:
    """Per-device top-k uploads (``[compression]`` without ``[secagg]``), when configured."""
    c = m["config"].get("compression", {})
    if m["config"].get("secagg", {}).get("enabled") or c.get("keep_ratio", 1.0) >= 1.0:
        return ""
    return (
        f"<h2>Compression</h2><p>Each device uploaded its own top {c['keep_ratio']:g} of the "
        f"coordinates, values in {c['value_bits']} bits ({c['rounding']} rounding"
        + (", error feedback" if c.get("error_feedback") else ", no error feedback")
        + "), indices as a deflated bitmap; bytes up per device are in the bandwidth table.</p>"
    )


def render_report(m: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page."""
    cmp_rows = "".join(
        f"<tr><td>{html.escape(n)}</td>"
        + "".join(
            f"<td>{_fmt(m['comparison'][n].get(k))}</td>"
            for k in ("f1", "far", "mar", "precision", "recall", "roc_auc")
        )
        + "</tr>"
        for n in ("federated", "local_only", "centralised", "flag_everything")
        if n in m["comparison"]
    )
    last = m["rounds"][-1]
    segment = {x["id"]: x["segment"] for x in m["devices"]}
    traffic = device_traffic(m)
    eps = last.get("epsilon") or {}
    dev_rows = "".join(
        f"<tr><td>{html.escape(d)}</td><td>{html.escape(segment[d])}</td>"
        + "".join(f"<td>{_fmt(v.get(k))}</td>" for k in ("f1", "far", "mar", "roc_auc"))
        + f"<td>{_fmt(eps.get(d))}</td>"
        + "".join(f"<td>{x:.0f}</td>" for x in traffic.get(d, (0.0, 0.0, 0.0, 0.0)))
        + "</tr>"
        for d, v in last["per_device"].items()
    )
    warn = (
        ""
        if m["has_signal"]
        else (
            "<p class=warn><b>Plumbing only:</b> this dataset carries no attack signal once its "
            "leaks are removed; the detection figures below are not a measure of quality.</p>"
        )
    )
    rejected = sum(len(r["rejected"]) for r in m["rounds"])
    bw = m["bandwidth"]
    imgs = "".join(
        f'<img src="data:image/png;base64,{p}">'
        for p in (plot_rounds(m), plot_comparison(m), plot_segments(m), plot_bandwidth(m))
    )
    cfg = html.escape(str(m["config"]))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ztfm simulate report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:right}}td:first-child,th:first-child{{text-align:left}}img{{max-width:49%}}
.warn{{background:#fff3cd;padding:.5em}}code{{font-size:85%}}</style></head><body>
<h1>ztfm simulate: {html.escape(m["dataset"])}, {m["n_devices"]} devices,
{len(m["rounds"])} rounds</h1>{warn}
<p>Detector <b>{html.escape(m["config"]["detector"]["name"])}</b> with {m["n_params"]} shared
parameters over {m["n_features"]} streaming features; each device calibrates its own threshold
(target FAR {m["config"]["detector"]["target_far"]}). Rejected or timed-out replies over the run:
{rejected}. Wall time {m["wall_s"]["total"]:.1f} s.</p>
<h2>Federated vs local-only vs centralised</h2>
<table><tr><th>training</th><th>F1</th><th>FAR</th><th>MAR</th><th>precision</th><th>recall</th>
<th>ROC-AUC</th></tr>{cmp_rows}</table>
<p>Pooled over every device's held-out rows (TP/FP/FN/TN summed); ROC-AUC is the mean over
devices. "flag everything" is the reference every result must beat.</p>
{imgs}
{security_section(m)}
{secagg_section(m)}{compression_section(m)}
<h2>Bandwidth</h2><p>Mean per device per round: {bw["mean_bytes_up_per_device_per_round"]:.0f} B up,
{bw["mean_bytes_down_per_device_per_round"]:.0f} B down; at one round per
{bw["round_period_s"] / 3600:g} h that is {bw["bytes_up_per_device_per_week"] / 1e6:.2f} MB up and
{bw["bytes_down_per_device_per_week"] / 1e6:.2f} MB down per device per week.</p>
<h2>Per device</h2><p>Detection in the last round; epsilon spent so far; bytes as the mean
over the rounds the device took part in, and per week at that rate.</p>
<table><tr><th>device</th><th>segment</th><th>F1</th><th>FAR</th><th>MAR</th><th>ROC-AUC</th>
<th>epsilon</th><th>B up / round</th><th>B down / round</th><th>KB up / week</th>
<th>KB down / week</th></tr>{dev_rows}</table>
<h2>Configuration</h2><p><code>{cfg}</code></p></body></html>"""

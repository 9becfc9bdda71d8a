"""The printed table: system x scenario, median and min-max, ratios against each peer."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

PEERS = ("procrastinate", "pgqueuer")
FLOOR = "sql-floor"
EXTRAS = (
    ("commits_per_job", "commits/job", "{:.2f}"),
    ("statements_per_job", "stmts/job", "{:.2f}"),
    ("client_cpu_ms_per_job", "client CPU ms/job", "{:.3f}"),
    ("worker_cpu_ms_per_job", "worker CPU ms/job", "{:.3f}"),
    ("pg_cpu_ms_per_job", "PG CPU ms/job", "{:.3f}"),
    ("broker_cpu_ms_per_job", "broker CPU ms/job", "{:.3f}"),
    ("worker_cpu_share", "worker CPU share", "{:.0%}"),
    ("p95", "p95 ms", "{:.2f}"),
    ("p99", "p99 ms", "{:.2f}"),
    ("rss_first_mib", "RSS after 10% MiB", "{:.1f}"),
    ("rss_last_mib", "RSS at end MiB", "{:.1f}"),
)


def unit(scenario: str) -> str:
    return {
        "latency": "p50 ms",
        "memory": "RSS end/10%",
        "backlog": "worst ratio",
        "flow_control": "worst ratio",
    }.get(scenario, "jobs/s")


def lower_is_better(scenario: str) -> bool:
    return scenario in ("latency", "memory")


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Median / min / max of each (scenario, system), and the median of every extra."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("error") is None:
            groups[(row["scenario"], row["system"])].append(row)
    out = {}
    for key, group in groups.items():
        values = [row["value"] for row in group]
        extras = defaultdict(list)
        for row in group:
            for name, value in row["extra"].items():
                extras[name].append(value)
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "reps": len(values),
            "extra": {name: statistics.median(v) for name, v in extras.items()},
        }
    return out


def ratio(
    summary: dict[tuple[str, str], dict[str, Any]], scenario: str, a: str, b: str
) -> float | None:
    """How many times better a is than b (>1 means a wins), by medians."""
    x, y = summary.get((scenario, a)), summary.get((scenario, b))
    if not x or not y or not x["median"] or not y["median"]:
        return None
    return y["median"] / x["median"] if lower_is_better(scenario) else x["median"] / y["median"]


def render(rows: list[dict[str, Any]], scenarios: list[str], systems: list[str]) -> str:
    summary = summarize(rows)
    lines = [
        "| scenario | unit | "
        + " | ".join(f"{s} median (min–max)" for s in systems)
        + " | ours vs procrastinate | ours vs pgqueuer | ours / floor |",
        "|---" * (len(systems) + 5) + "|",
    ]
    for scenario in scenarios:
        cells = []
        for system in systems:
            s = summary.get((scenario, system))
            cells.append(f"{_fmt(s['median'])} ({_fmt(s['min'])}–{_fmt(s['max'])})" if s else "—")
        ratios = []
        for other in (*PEERS, FLOOR):
            r = ratio(summary, scenario, "ours", other)
            ratios.append(f"{r:.2f}×" if r is not None else "—")
        lines.append(f"| {scenario} | {unit(scenario)} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "Per-job costs and shares (medians; ratios above: >1× means ours is better):", ""]
    lines.append("| scenario | system | " + " | ".join(label for _, label, _ in EXTRAS) + " |")
    lines.append("|---" * (len(EXTRAS) + 2) + "|")
    for scenario in scenarios:
        for system in systems:
            s = summary.get((scenario, system))
            if not s or not s["extra"]:
                continue
            cells = [
                fmt.format(s["extra"][name]) if name in s["extra"] else ""
                for name, _, fmt in EXTRAS
            ]
            lines.append(f"| {scenario} | {system} | " + " | ".join(cells) + " |")
    errors = [row for row in rows if row.get("error")]
    if errors:
        lines += ["", "Failed runs:"]
        lines += [f"- {r['scenario']} / {r['system']} rep {r['rep']}: {r['error']}" for r in errors]
    return "\n".join(lines)

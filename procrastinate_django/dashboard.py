"""The admin dashboard's data: queues, per-minute outcomes, workers, periodic ticks, and its charts.

Everything here is cheap at any history size: queue counts come from the
waiting/running rows (queue_stats), throughput from the small per-minute
table that job_finish_many fills (pcq_outcome_stats), never from a scan of
finished jobs. Charts are SVG drawn here, so the page needs no JavaScript
library and no CDN (admin sites often run offline).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from procrastinate_core.app import App

#: Minutes the charts and the queue table's "last hour" columns cover.
WINDOW_MINUTES = 60
#: Outcomes charted, with their colour (the admin's status colours).
CHARTED = (("succeeded", "#2b8a3e"), ("failed", "#c92a2a"), ("retried", "#a67c00"))


@dataclasses.dataclass(frozen=True)
class Chart:
    """One outcome's count per minute over the window, oldest first, and its drawing."""

    outcome: str
    counts: tuple[int, ...]
    svg: SafeString

    @property
    def total(self) -> int:
        return sum(self.counts)


def _minutes(now: datetime.datetime) -> list[datetime.datetime]:
    last = now.replace(second=0, microsecond=0)
    return [
        last - datetime.timedelta(minutes=WINDOW_MINUTES - 1 - i) for i in range(WINDOW_MINUTES)
    ]


def bar_chart(
    outcome: str, colour: str, minutes: Sequence[datetime.datetime], counts: Sequence[int]
) -> Chart:
    """A bar per minute, scaled to the busiest one; each bar's tooltip says its minute and count."""
    width, height, gap = 600, 90, 1
    bar = width / len(counts)
    top = max(counts) or 1
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {} {}</title></rect>',
        (
            (
                f"{i * bar:.1f}",
                f"{height - (count / top) * height:.1f}",
                f"{max(bar - gap, 1):.1f}",
                f"{(count / top) * height:.1f}",
                colour,
                minute.strftime("%H:%M"),
                count,
                outcome,
            )
            for i, (minute, count) in enumerate(zip(minutes, counts, strict=True))
        ),
    )
    svg = format_html(
        '<svg class="pcq-chart" data-outcome="{}" data-total="{}" viewBox="0 0 {} {}" '
        'width="100%" height="{}" preserveAspectRatio="none" role="img" aria-label="{} per '
        'minute over the last hour">'
        '<rect width="{}" height="{}" fill="none" stroke="#ddd"></rect>{}</svg>',
        outcome,
        sum(counts),
        width,
        height,
        height,
        outcome,
        width,
        height,
        bars,
    )
    return Chart(outcome=outcome, counts=tuple(counts), svg=svg)


def charts(rows: Iterable[Mapping[str, Any]], now: datetime.datetime) -> list[Chart]:
    """One chart per charted outcome, every queue together."""
    minutes = _minutes(now)
    index = {minute: i for i, minute in enumerate(minutes)}
    counts = {outcome: [0] * len(minutes) for outcome, _ in CHARTED}
    for row in rows:
        position = index.get(row["minute"].astimezone(now.tzinfo).replace(second=0, microsecond=0))
        if position is not None and row["outcome"] in counts:
            counts[row["outcome"]][position] += int(row["count"])
    return [bar_chart(outcome, colour, minutes, counts[outcome]) for outcome, colour in CHARTED]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def build(app: App) -> dict[str, Any]:
    """The dashboard's context: a handful of small queries, on the database clock."""
    manager = app.job_manager
    now = datetime.datetime.fromtimestamp(manager.database_now(), datetime.timezone.utc)
    stats = manager.get_queue_stats()
    outcomes = manager.get_outcome_stats(minutes=WINDOW_MINUTES)
    workers = manager.list_workers()
    running = manager.count_running_jobs_by_worker()
    paused = manager.list_paused()

    last_hour: dict[str, dict[str, int]] = {}
    for row in outcomes:
        per_queue = last_hour.setdefault(row["queue_name"], {})
        per_queue[row["outcome"]] = per_queue.get(row["outcome"], 0) + int(row["count"])
    names = sorted({s.queue_name for s in stats} | set(last_hour))
    by_name = {s.queue_name: s for s in stats}
    queues = []
    for name in names:
        live = by_name.get(name)
        done = last_hour.get(name, {})
        queues.append(
            {
                "name": name,
                "todo": live.todo if live else 0,
                "doing": live.doing if live else 0,
                "latency": _age(live.oldest_ready_age if live else None),
                "oldest_running": _age(live.oldest_running_age if live else None),
                "succeeded": done.get("succeeded", 0),
                "failed": done.get("failed", 0),
                "retried": done.get("retried", 0),
            }
        )
    ticks = sorted(
        (
            (
                datetime.datetime.fromtimestamp(
                    p.next_tick(now.timestamp()), datetime.timezone.utc
                ),
                p,
            )
            for p in app.periodic_tasks
        ),
        key=lambda pair: pair[0],
    )
    periodic = [
        {"task": p.task.name, "periodic_id": p.periodic_id, "cron": p.cron, "next_tick": at}
        for at, p in ticks
    ]
    return {
        "now": now,
        "queues": queues,
        "charts": charts(outcomes, now),
        "workers": [
            {
                **worker,
                "heartbeat": _age(worker["heartbeat_age"]),
                "running": running.get(worker["id"], 0),
            }
            for worker in workers
        ],
        "periodic": periodic,
        "paused": paused,
        "window_minutes": WINDOW_MINUTES,
    }

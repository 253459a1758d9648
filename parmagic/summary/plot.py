"""``--plot``: per-core utilisation over time, and when each worker ran which items.

matplotlib is an optional extra (``pip install parmagic[plot]``), imported only here. The
figure is drawn without pyplot, so it renders anywhere (no display needed).
"""

from __future__ import annotations

from .report import RunReport

PLOT_MISSING = "--plot draws with matplotlib, which is not installed: pip install 'parmagic[plot]'"


def draw(report: RunReport):
    """A matplotlib Figure of the run (IPython shows it as a PNG in a notebook)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(PLOT_MISSING) from None
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    cores_axes, workers_axes = figure.subplots(2, 1, sharex=True, height_ratios=(2, 3))
    timings = report.items
    usage = report.usage
    sampled = [usage.started] if usage is not None and usage.times else []
    origin = min([t.start for t in timings] + sampled, default=0.0)
    if usage is not None and usage.times:
        edges = [t - origin for t in [usage.started, *usage.times]]
        for number, values in enumerate(usage.cores):
            cores_axes.stairs(values, edges, label=f"core {number}")
        cores_axes.stairs(
            usage.ours, edges, color="black", linestyle="--", label="this kernel and its workers"
        )
        cores_axes.legend(fontsize="small", loc="lower center", ncols=3)
    cores_axes.set_ylim(0, 105)
    cores_axes.set_ylabel("busy %")
    cores_axes.set_title(f"{report.backend}: {report.item_count} items, wall {report.wall:.2f} s")
    workers = sorted({t.worker for t in timings})
    for row, worker in enumerate(workers):
        spans = [(t.start - origin, t.end - t.start) for t in timings if t.worker == worker]
        edges = {"edgecolor": "white", "linewidth": 0.3} if len(spans) <= 200 else {}
        workers_axes.broken_barh(spans, (row - 0.4, 0.8), **edges)  # thousands: no gaps drawn
    workers_axes.set_yticks(range(len(workers)), workers, fontsize="small")
    workers_axes.set_xlabel("seconds since the first item started")
    workers_axes.set_ylabel("worker")
    return figure

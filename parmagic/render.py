"""The summary after a run: compact text for terminals, a small HTML table for notebooks,
and one line of advice when something is off."""

from __future__ import annotations

import html
import sys

from .errors import NATIVE_LIMIT
from .report import RunReport

BLOCKS = " ▏▎▍▌▋▊▉█"
# for a stdout that encodes no more
ASCII = str.maketrans({"·": "|", "×": "x", "≈": "~", "≤": "<="})
LOAD_SECONDS = 0.3  # the samples of a shorter run say too little of other programs


HEAVY_DATA = 1 << 20  # bytes: less than this cannot be what took a run's time


def advice(r: RunReport) -> str | None:
    """One sentence when the figures show a likely mistake, else None (nothing after a run
    that stopped early: its figures describe a part of the loop, not the loop)."""
    if r.stopped_at is not None or r.interrupted:
        return None
    if r.usage is not None and r.usage.others_mean > 25 and r.wall > LOAD_SECONDS:
        return (
            f"other programs used {r.usage.others_mean:.0f}% of the machine during the run: "
            "these figures say more about them than about the loop"
        )
    computing = r.computing and r.item_count > 1
    # items sharing a process that compute: the GIL lets one of them run Python at a time,
    # unless their code releases it (NumPy's): then threads are fine
    gil_bound = r.shared_wall > 0 and not r.releases_the_gil
    if computing and gil_bound and r.cores > 1 and r.cpu > 0.2:
        return "items compute, and one thread runs Python at a time: try --backend processes"
    if computing and r.copies_objects and r.workers > r.cores:
        return f"{r.workers} workers compute on {r.cores} cores: --workers {r.cores} is enough"
    if r.copies_objects and r.speedup < 1:
        if r.pool_start > 0.5 * r.wall:
            return "starting the workers took most of this run: the next run finds them started"
        if r.startup + r.sending > 0.5 * r.wall and r.bytes_sent > HEAVY_DATA:
            return (
                "sending the data to the workers took most of the run: capture less, or use threads"
            )
        return (
            f"the loop is too small to pay for worker processes: serial is faster here "
            f"({'at most' if r.serial_is_bound else 'about'} {r.serial_estimate:.3f} s)"
        )
    busy = [b for b in r.worker_busy.values() if b > 0]
    if len(busy) > 1 and r.wall > 0.2 and max(busy) > 2 * min(busy) and r.chunks < 4 * len(busy):
        return "some workers were idle while others worked: try a smaller --chunksize"
    return None


def _size(count: int) -> str:
    for unit in ("B", "kB", "MB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _can_draw() -> bool:
    try:
        BLOCKS.encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def bar(percent: float, width: int = 8, unicode: bool = True) -> str:
    filled = max(0.0, min(percent, 100.0)) / 100 * width
    if not unicode:
        return "#" * round(filled) + "." * (width - round(filled))
    full, part = int(filled), int((filled - int(filled)) * 8)
    return (BLOCKS[-1] * full + (BLOCKS[part] if part else "")).ljust(width)


def _head(r: RunReport) -> str:
    method = f" ({r.start_method})" if r.start_method else ""
    workers = f"{r.workers} worker{'s' if r.workers != 1 else ''}"
    if r.backend == "asyncio":
        workers = f"at most {r.workers} at once"
    line = (
        f"parmagic: {r.backend}{method} · {workers} · {r.item_count} items in {r.chunks} chunks"
        f" · wall {r.wall:.3f} s · busy {r.busy:.3f} s"
    )
    if r.stopped_at is not None:
        line += f" · stopped at item {r.stopped_at}"
    if r.interrupted:
        line += f" · interrupted ({len(r.unfinished)} unfinished)"
    return line


def _workers_text(r: RunReport) -> str:
    total = sum(r.worker_busy.values()) or 1.0
    shares = sorted(r.per_worker.items())
    if len(shares) <= 4:
        return " · ".join(
            f"{name}: {count} items ({r.worker_busy.get(name, 0) / total:.0%})"
            for name, count in shares
        )
    counts = [count for _, count in shares]
    return f"{len(shares)} workers, {min(counts)}-{max(counts)} items each"


def _notes(r: RunReport) -> list[str]:
    lines = []
    if r.auto_reason:
        line = f"auto chose {r.backend}: {r.auto_reason}"
        if r.auto_saw_computing is not None and r.auto_saw_computing != r.computing:
            line += f"; over the whole loop they {'compute' if r.computing else 'mostly wait'}"
        lines.append(line)
    if r.as_written:
        lines.append(f"the loop ran as written in the kernel: {r.as_written}")
    if r.native_limit:
        lines.append(NATIVE_LIMIT.format(limit=r.native_limit))
    if r.failures:
        lines.append(f"{len(r.failures)} item(s) failed:")
        lines += [f"  item {i} ({item}): {error}" for i, item, error in r.failures[:10]]
    return lines


def _sections(r: RunReport, core_bar) -> list[tuple[str, str]]:
    """(label, text) rows shared by the text and HTML forms; ``core_bar(n, percent)`` draws
    one core."""
    rows = [("", _head(r))]
    if r.item_count:
        kind = "computing" if r.computing else "mostly waiting"
        cpu = f"{r.cpu:.3f} s in the items, {r.cpu_share:.0%} of their own time: {kind}"
        sent = f" ({_size(r.bytes_sent)})" if r.bytes_sent else ""
        split = (
            f"start-up {r.startup:.3f} · sending {r.sending:.3f}{sent} · running {r.waiting:.3f}"
        )
        rows.append(("time", f"{split} · applying {r.applying:.3f} s"))
        rows.append(("CPU", cpu))
        bound = r.serial_is_bound
        serial = f"serial {'≤' if bound else '≈'} {r.serial_estimate:.3f} s"
        speedup = f"{'at most ' if bound else ''}{r.speedup:.2f}×"
        serial = serial if r.backend != "serial" else "serial"
        ideal = f"{speedup} ({serial}) of an ideal {r.ideal:.0f}× here"
        rows.append(("speedup", f"{ideal} · efficiency {r.efficiency:.0%}"))
        if r.usage is not None and r.usage.times:
            cores = "  ".join(core_bar(n, m) for n, m in enumerate(r.usage.core_means()))
            machine = f"this kernel and its workers {r.usage.ours_mean:.0f}%"
            rows.append(
                ("cores", f"{cores} · {machine}, other programs {r.usage.others_mean:.0f}%")
            )
        rows.append(("workers", _workers_text(r)))
        if r.dashboard:
            rows.append(("dashboard", r.dashboard))
        hint = advice(r)
        if hint:
            rows.append(("advice", hint))
    return rows + [("", line) for line in _notes(r)]


def text_summary(r: RunReport, unicode: bool | None = None) -> str:
    unicode = _can_draw() if unicode is None else unicode
    rows = _sections(r, lambda n, m: f"{n} {bar(m, unicode=unicode)} {m:3.0f}%")
    text = "\n".join(line if not label else f"  {label:<8} {line}" for label, line in rows)
    return text if unicode else text.translate(ASCII)


# The notebook's own colours (JupyterLab's variables), so that the bars suit a dark theme as
# well as a light one. The plain colour serves twice: as the variable's fallback where the
# variables are not defined (classic Notebook, VS Code, nbconvert's pages), and on its own
# where JupyterLab drops var() from an untrusted notebook's HTML (one opened, not run, here).
# The grey shows on light and dark alike.
BAR_TRACK = "rgba(128, 128, 128, 0.25)", "--jp-layout-color2"
BAR_FILL = "#4c78a8", "--jp-brand-color1"
BAR_FILL_DIFFERENT = "#e45756", "--jp-error-color1"


def _background(colours: tuple[str, str]) -> str:
    plain, variable = colours
    return f"background:{plain};background:var({variable}, {plain})"


def html_bar(percent: float, width_px: int, fill: tuple[str, str] = BAR_FILL) -> str:
    """A small horizontal bar, ``percent`` full, as inline HTML."""
    return (
        f"<span style='display:inline-block;width:{width_px}px;height:0.8em;"
        f"{_background(BAR_TRACK)};margin:0 4px;vertical-align:middle'>"
        f"<span style='display:block;height:100%;width:{percent:.0f}%;{_background(fill)}'>"
        "</span></span>"
    )


def html_summary(r: RunReport) -> str:
    """A compact table with small inline bars, for notebooks."""
    marker = "\0"  # the bars are HTML: kept out of the escaping

    def core(n: int, percent: float) -> str:
        return f"{n}{marker}{percent:.0f}{marker}"

    def inline_bar(text: str) -> str:
        parts = text.split(marker)
        out = html.escape(parts[0])
        for percent, rest in zip(parts[1::2], parts[2::2], strict=False):
            out += html_bar(float(percent), 60) + f"{percent}%" + html.escape(rest)
        return out

    def cell(label: str, text: str) -> str:
        if label == "dashboard":
            link = html.escape(text)
            return f"<a href='{link}' target='_blank'>{link}</a>"
        return inline_bar(text)

    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(label)}</th>"
        f"<td style='text-align:left'>{cell(label, text)}</td></tr>"
        if label
        else f"<tr><td colspan='2' style='text-align:left'>{cell(label, text)}</td></tr>"
        for label, text in _sections(r, core)
    )
    return f"<table class='parmagic-summary' style='font-size:90%'>{cells}</table>"

"""The summary after a run: compact text for terminals, a small HTML table for notebooks,
and one line of advice when something is off."""

from __future__ import annotations

import html
import sys

from ..errors import NATIVE_LIMIT, TOO_SHORT, plural
from .monitor import INTERVAL
from .report import RunReport

BLOCKS = " ▏▎▍▌▋▊▉█"
# for a stdout that encodes no more
ASCII = str.maketrans({"·": "|", "×": "x", "≈": "~", "≤": "<=", "…": "...", "µ": "u"})
# A shorter run has fewer than three of the CPU sampler's intervals: its per-core and machine
# figures are one or two samples, mostly of what ran before and after it
MEASURABLE = 3 * INTERVAL
LOAD_SECONDS = MEASURABLE  # the samples of a shorter run say too little of other programs
HEAVY_DATA = 1 << 20  # bytes: less than this cannot be what took a run's time
RANGES_SHOWN = 6  # unfinished items: ranges named before the rest is counted
TOO_LITTLE_FOR_THREADS = 0.5  # a speedup under this on threads: handing items out cost more


def advice(r: RunReport) -> str | None:
    """One sentence when the figures show a likely mistake, else None (nothing after a run
    that stopped early: its figures describe a part of the loop, not the loop)."""
    if r.stopped_at is not None or r.interrupted:
        return None
    if r.usage is not None and r.usage.others_mean > 25 and r.wall >= MEASURABLE:
        return (
            f"other programs used {r.usage.others_mean:.0f}% of the machine during the run: "
            "these figures say more about them than about the loop"
        )
    for rule in (_turns_at_the_gil, _worker_processes, _too_small_for_threads, _idle_workers):
        hint = rule(r)
        if hint:
            return hint
    return None


def _turns_at_the_gil(r: RunReport) -> str | None:
    """Items sharing a process that compute: the GIL lets one of them run Python at a time,
    unless their code releases it (NumPy's): then threads are fine."""
    if not (r.computing and r.item_count > 1 and r.shared_wall > 0 and not r.releases_the_gil):
        return None
    turns = "items compute, and one thread runs Python at a time"
    if r.processes_refused:
        refused = r.processes_refused
        return f"{turns}; processes cannot take this loop ({refused}): serial is as fast"
    if r.cores > 1 and r.cpu > 0.2:
        return f"{turns}: try --backend processes"
    if r.speedup < TOO_LITTLE_FOR_THREADS:
        return _too_small_for_threads(r)
    if r.cores == 1:
        return f"{turns}, on the one usable core: run the loop serially (--backend serial)"
    return (
        f"{turns}: threads cannot speed this loop up, and its {_seconds(r.cpu)} of work is too "
        "little to pay for worker processes: run it serially (--backend serial)"
    )


def _worker_processes(r: RunReport) -> str | None:
    computing = r.computing and r.item_count > 1
    if computing and r.copies_objects and r.workers > r.cores:
        return f"{r.workers} workers compute on {r.cores} cores: --workers {r.cores} is enough"
    if not (r.copies_objects and r.speedup < 1):
        return None
    if r.pool_start > 0.5 * r.wall:
        return "starting the workers took most of this run: the next run finds them started"
    if r.pool_start > 0 and r.wall - r.pool_start < r.serial_estimate:
        return "starting the workers cost this run its speedup: the next run finds them started"
    if r.startup + r.sending > 0.5 * r.wall and r.bytes_sent > HEAVY_DATA:
        return "sending the data to the workers took most of the run: capture less, or use threads"
    return (
        f"the loop is too small to pay for worker processes: serial is faster here ({_serial(r)})"
    )


def _too_small_for_threads(r: RunReport) -> str | None:
    """Items too short to gain from running side by side: handing each one to a thread (or
    a coroutine) and applying its changes cost more than the item."""
    if r.copies_objects or r.shared_wall <= 0 or r.plain_loop:
        return None
    if r.item_count < 2 or r.speedup >= TOO_LITTLE_FOR_THREADS:
        return None
    return f"the loop is too small for {r.backend}: serial is faster here ({_serial(r)})"


def _idle_workers(r: RunReport) -> str | None:
    """A smaller chunksize spreads the items better, unless each chunk already held one item:
    then the items themselves took unequal times, which no chunksize changes."""
    busy = [b for b in r.worker_busy.values() if b > 0]
    if len(busy) < 2 or r.wall < MEASURABLE or r.chunks >= r.item_count:
        return None
    if max(busy) > 2 * min(busy) and r.chunks < 4 * len(busy):
        return "some workers were idle while others worked: try a smaller --chunksize"
    return None


def _seconds(seconds: float) -> str:
    """A duration with its significant figures: never "0.000 s" for a short one."""
    if seconds >= 0.001:
        return f"{seconds:.3f} s"
    if seconds >= 0.00001:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def times(speedup: float) -> str:
    """A speedup with two decimals: never "0.00×" for a run a hundred times slower."""
    return f"{speedup:.2f}×" if round(speedup, 2) >= 0.01 else "under 0.01×"


def _serial(r: RunReport) -> str:
    return f"{'at most' if r.serial_is_bound else 'about'} {_seconds(r.serial_estimate)}"


def item_ranges(indices: list[int], shown: int = RANGES_SHOWN) -> str:
    """[4, 5, 6, 9] -> "4-6, 9"; past ``shown`` ranges, the rest counted."""
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and index == ranges[-1][1] + 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:shown])
    if len(ranges) > shown:
        text += f", … ({len(indices)} items in all)"
    return text


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
    if r.event_loop:
        workers = f"at most {r.workers} at once"
    line = (
        f"parmagic: {r.backend}{method} · {workers} · {plural(r.item_count, 'item')} in "
        f"{plural(r.chunks, 'chunk')}"
        f" · wall {r.wall:.3f} s · busy {_seconds(r.busy)}"
    )
    if r.stopped_at is not None:
        line += f" · stopped at item {r.stopped_at}"
    if r.interrupted:
        line += " · interrupted"
        if r.unfinished:
            items = "items" if len(r.unfinished) > 1 else "item"
            line += f": {items} {item_ranges(r.unfinished)} unfinished"
    return line


def _workers_text(r: RunReport) -> str:
    total = sum(r.worker_busy.values()) or 1.0
    shares = sorted(r.per_worker.items())
    if len(shares) <= 4:
        items = {name: f"{count} item{'s' if count != 1 else ''}" for name, count in shares}
        return " · ".join(
            f"{name}: {items[name]} ({r.worker_busy.get(name, 0) / total:.0%})"
            for name, _ in shares
        )
    counts = [count for _, count in shares]
    return f"{len(shares)} workers, {min(counts)}-{max(counts)} items each"


def _notes(r: RunReport) -> list[tuple[str, str]]:
    lines = []
    if r.auto_reason:
        line = f"auto chose {r.backend}: {r.auto_reason}"
        if r.auto_saw_computing is not None and r.auto_saw_computing != r.computing:
            line += f"; over the whole loop they {'compute' if r.computing else 'mostly wait'}"
        lines.append(("", line))
    if r.as_written:
        lines.append(("", f"the loop ran as written in the kernel: {r.as_written}"))
    if r.native_limit and r.native_code and r.tells_native_limit:
        lines.append(("note", NATIVE_LIMIT.format(limit=r.native_limit)))
    if r.failures:
        lines.append(("", f"{plural(len(r.failures), 'item')} failed:"))
        lines += [("", f"  item {i} ({item}): {error}") for i, item, error in r.failures[:10]]
    return lines


def _speedup(r: RunReport) -> str:
    """The speedup against its ideal. Both are estimates near the top: a speedup above the
    ideal is shown as the ideal (as the efficiency is at most 100%)."""
    bound = r.serial_is_bound
    serial = f"serial {'≤' if bound else '≈'} {_seconds(r.serial_estimate)}"
    serial = serial if not r.plain_loop else "serial"
    speedup = min(r.speedup, r.ideal)
    shown = times(speedup)
    shown = f"at most {shown}" if bound and shown[0].isdigit() else shown
    return f"{shown} ({serial}) of an ideal {r.ideal:.0f}× here · efficiency {r.efficiency:.0%}"


def _cores(r: RunReport, core_bar) -> str:
    """Each core's mean use, and the machine's split between this kernel with its workers and
    other programs. Ours cannot exceed what the cores used between them: any excess is the
    counters' rounding."""
    means = r.usage.core_means()
    ours = min(r.usage.ours_mean, sum(means) / len(means)) if means else 0.0
    cores = "  ".join(core_bar(n, m) for n, m in enumerate(means))
    others = r.usage.others_mean
    return f"{cores} · this kernel and its workers {ours:.0f}%, other programs {others:.0f}%"


def _cpu(r: RunReport) -> tuple[str, str]:
    """From the items' own clocks, not from samples: a short run has it too."""
    kind = "computing" if r.computing else "mostly waiting"
    return "CPU", f"{_seconds(r.cpu)} in the items, {r.cpu_share:.0%} of their own time: {kind}"


def _measured(r: RunReport, core_bar) -> list[tuple[str, str]]:
    """The figures of a run long enough to measure."""
    sent = f" ({_size(r.bytes_sent)})" if r.bytes_sent else ""
    split = f"start-up {r.startup:.3f} · sending {r.sending:.3f}{sent} · running {r.waiting:.3f}"
    rows = [("time", f"{split} · applying {r.applying:.3f} s"), _cpu(r), ("speedup", _speedup(r))]
    if r.usage is not None and r.usage.times:
        rows.append(("cores", _cores(r, core_bar)))
    rows.append(("workers", _workers_text(r)))
    return rows


def _sections(r: RunReport, core_bar) -> list[tuple[str, str]]:
    """(label, text) rows shared by the text and HTML forms; ``core_bar(n, percent)`` draws
    one core. A run too short to measure gets its head, its CPU line, that it was too short,
    and advice."""
    rows = [("", _head(r))]
    if r.item_count:
        if r.wall >= MEASURABLE:
            rows += _measured(r, core_bar)
        else:
            rows.append(_cpu(r))
            rows.append(("figures", TOO_SHORT.format(wall=MEASURABLE, interval=INTERVAL)))
        if r.dashboard:
            rows.append(("dashboard", r.dashboard))
        hint = advice(r)
        if hint:
            rows.append(("advice", hint))
    return rows + _notes(r)


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


def themed(css_property: str, colours: tuple[str, str]) -> str:
    """An inline style for a page-theme colour: the plain colour, then the variable with the
    plain one as its fallback (see above)."""
    plain, variable = colours
    return f"{css_property}:{plain};{css_property}:var({variable}, {plain})"


def html_bar(percent: float, width_px: int, fill: tuple[str, str] = BAR_FILL) -> str:
    """A small horizontal bar, ``percent`` full, as inline HTML."""
    track, filled = themed("background", BAR_TRACK), themed("background", fill)
    return (
        f"<span style='display:inline-block;width:{width_px}px;height:0.8em;"
        f"{track};margin:0 4px;vertical-align:middle'>"
        f"<span style='display:block;height:100%;width:{percent:.0f}%;{filled}'>"
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

"""parmagic: ``%%parallel`` runs a notebook loop on threads or processes, with serial results.

Importing this package is cheap and imports no IPython: worker processes import it too.

The path of a cell, and the module of each step (folders: analysis/ reads the cell, run/ is
the kernel's side of a run, worker/ is where items run, summary/ shows it)::

    %%parallel -b processes            magics.py     the options (options.py), then:
    for x in data:  <cell>       ──▶   analysis/     cell.py finds the one loop; body.py,
        ...                                          dataflow.py, hidden_effects.py check its
                                                     body; policy.py's table refuses what no
                                                     backend asked can run as the plain loop; the
                                                     loop becomes a call __parmagic_loop__(data)
          │ the rest of the cell runs in the kernel, as written, up to the loop
          ▼
    LoopRun(data)                      run/loop_run  late checks on the kernel's objects
                                                     (run_checks.py); the backend: named,
                                                     or auto.py's lead-in, or each one for
                                                     compare.py; warm pools in session.py;
                                                     the item function from itemcode.py
          │ Task (task.py) + the items, lazily
          ▼
    dispatch.execute                   run/dispatch  chunks of items out, a bounded window
          │ submit(seq, start, items)       ▲ wait() -> ChunkResult, in any order
          ▼                                 │
    Backend                            backends/     base.py's contract; one module each
          │ the kernel's thread, pool threads, or worker processes
          ▼   (worker/process.py) and dask, the task pickled once (shipping.py)
    run_chunk                          worker/chunk  each item: its output (item_output.py),
                                                     its time (item_clock.py), its recorded
                                                     changes (effects.py), names, errors;
                                                     in worker processes, what it changed
                                                     in the kernel's objects, and references
                                                     to them (kernel_objects.py); after the
                                                     chunk, the guard (hidden_state.py)
          │ ChunkResult
          ▼
    Applier, in item order             run/dispatch  output shown, changes replayed, names
                                                     bound, the first error raised with the
                                                     user's frames (errors.py); a chunk that
                                                     changed hidden state stops the run
          │ RunReport (report.py)
          ▼
    the summary                        summary/      render.py: text or HTML; plot.py for --plot
"""

from __future__ import annotations

import atexit

__version__ = "0.1.0"

_loaded: dict[int, object] = {}


def load_ipython_extension(ipython) -> None:
    """``%load_ext parmagic``: register the magics and make them configurable."""
    from .magics import ParallelMagics
    from .worker.shared_files import sweep_leftovers

    if id(ipython) in _loaded:
        return
    sweep_leftovers()  # shared-memory files of kernels killed mid-run
    magics = ParallelMagics(shell=ipython)
    atexit.register(magics.close)  # a kernel that shuts down closes its pools first
    ipython.register_magics(magics)
    ipython.configurables.append(magics)
    _loaded[id(ipython)] = magics


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext parmagic``: remove the magics and stop every pool they started."""
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    magics.close()
    atexit.unregister(magics.close)
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("parallel", None)
    manager.registry.pop(type(magics).__name__, None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)


def last_report():
    """The report of the most recent run in this kernel (None before the first run)."""
    for magics in reversed(list(_loaded.values())):
        return magics.session.last_report
    return None

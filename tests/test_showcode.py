"""--show-code and --export: the run as a plain program that runs under python."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import BACKENDS

from parmagic.demo import SlowServer

SETUP = "def digits(n):\n    return len(str(n ** n))\nlimit = 120\n"
CELL = (
    "counts = {}\ntotal = 0\nfound = []\nbase = 3\n"
    "for n in range(limit):\n    d = digits(n) + base\n    if d % 2:\n        continue\n"
    "    found.append(d)\n    counts[d % 7] = n\n    total += d\n"
    "print(len(found), total, sorted(counts.items()), n, d)\n"
)
EXPORTED = {
    "serial": "-b serial",
    "threads": "-b threads -w 3",
    "futures": "-b futures -w 3",
    "fork": BACKENDS["fork"],
    "spawn": BACKENDS["spawn"],
    "futures-spawn": "-b futures:processes -w 2 --start-method spawn",
}


def python(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", list(EXPORTED))
def test_exported_script_prints_what_the_cell_printed(ip, run, tmp_path, name):
    run(SETUP)
    script = tmp_path / "loop.py"
    outcome = run(f"%%parallel -q {EXPORTED[name]} --export {script}\n{CELL}")
    assert outcome.error is None, outcome.err
    printed_by_cell = outcome.out.splitlines()[0]
    assert "parmagic: wrote" in outcome.out
    done = python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed_by_cell
    text = script.read_text()
    assert 'if __name__ == "__main__":' in text and "def digits(n):" in text  # copied in


@pytest.mark.parametrize(
    "options, api",
    [
        ("-b threads", "ThreadPool("),
        ("-b processes --start-method spawn", 'multiprocessing.get_context("spawn").Pool('),
        ("-b futures", "as_completed(futures)"),
        ("-b futures:processes --start-method forkserver", "ProcessPoolExecutor("),
        ("-b serial", "map(loop_body"),
    ],
)
def test_show_code_uses_each_librarys_own_api(ip, run, options, api):
    run(SETUP)
    outcome = run(f"%%parallel -q {options} --show-code\nsq = [digits(n) for n in range(5)]\n")
    assert outcome.error is None, outcome.err
    assert api in outcome.out
    assert "def loop_body(n):" in outcome.out and "return digits(n)" in outcome.out
    assert "# From the notebook: digits" in outcome.out


def test_comprehension_with_condition_exports_and_runs(ip, run, tmp_path):
    run(SETUP)
    script = tmp_path / "squares.py"
    outcome = run(
        f"%%parallel -q {BACKENDS['spawn']} --export {script}\n"
        "sq = {n: digits(n) for n in range(12) if n % 3}\nprint(sq)\n"
    )
    assert outcome.error is None
    done = python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == outcome.out.splitlines()[0]


def test_names_that_are_not_simple_data_get_a_todo(ip, run, tmp_path):
    run("import threading\nclass Box:\n    pass\nbox = Box()\nlock = threading.Lock()\n")
    script = tmp_path / "todo.py"
    run(
        f"%%parallel -q -b threads --export {script}\nout = []\nfor i in range(3):\n    with lock:\n        out.append((i, box))\n"
    )
    text = script.read_text()
    assert "# TODO: define box (a __main__.Box in the notebook)" in text
    assert "# TODO: define lock (a _thread.lock in the notebook)" in text
    assert "class Box:" in text


def test_asyncio_export_uses_a_semaphore_and_runs(ip, run, tmp_path):
    script = tmp_path / "fetch.py"
    with SlowServer(latency=0.05) as site:
        ip.user_ns["base"] = site.url("/page/")
        outcome = run(
            f"%%parallel -q -b asyncio -w 4 --export {script}\nimport aiohttp\nsizes = []\n"
            "async with aiohttp.ClientSession() as s:\n    for n in range(12):\n"
            "        async with s.get(f'{base}{n}') as r:\n            sizes.append(len(await r.text()))\n"
            "print(sum(sizes), n)\n"
        )
        assert outcome.error is None, outcome.err
        done = python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == outcome.out.splitlines()[0]
    text = script.read_text()
    assert (
        "asyncio.Semaphore(4)" in text
        and "asyncio.gather(" in text
        and "asyncio.run(main())" in text
    )


MODELS = (
    "class Model:\n    def __init__(self, k):\n        self.k, self.w = k, None\n"
    "    def fit(self, xs):\n        self.w = sum(xs) * self.k\n        return self\n"
)


FIT = (
    "models = [Model(k) for k in range(6)]\nkept = []\nfor m in models:\n"
    "    m.fit([1, 2, 3])\n    kept.append(m)\n"
    "print([x.w for x in models], all(a is b for a, b in zip(kept, models)), m is models[-1])\n"
)
NESTED = (
    "recs = [{'meta': {'n': 0}, 'k': k} for k in range(6)]\nmetas = [r['meta'] for r in recs]\n"
    "for i, r in enumerate(recs):\n    r['meta']['n'] = i\n    r['me'] = r\n"
    "print([m['n'] for m in metas], all(r['meta'] is m and r['me'] is r for r, m in zip(recs, metas)))\n"
)


@pytest.mark.parametrize(
    "name, cell, printed",
    [
        ("fork", FIT, "[0, 6, 12, 18, 24, 30] True True"),
        ("spawn", FIT, "[0, 6, 12, 18, 24, 30] True True"),
        ("futures-spawn", FIT, "[0, 6, 12, 18, 24, 30] True True"),
        ("fork", NESTED, "[0, 1, 2, 3, 4, 5] True"),  # tuple items, parts, self-references
    ],
)
def test_exported_script_carries_back_what_items_change_in_their_objects(
    ip, run, tmp_path, name, cell, printed
):
    """Items in worker processes change copies: the program takes the changes back onto its
    own objects, and keeps its own objects where the loop keeps the item."""
    run(MODELS)
    script = tmp_path / "changed.py"
    outcome = run(f"%%parallel -q {EXPORTED[name]} --export {script}\n{cell}")
    assert outcome.error is None, outcome.err
    assert outcome.out.splitlines()[0] == printed
    done = python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed
    assert "def take_back(mine, theirs" in script.read_text()

"""What is particular to some backends: asyncio's event loop, auto's choice."""

from __future__ import annotations

import pytest
from conftest import report

from parmagic.demo import SlowServer


@pytest.fixture
def site():
    with SlowServer(latency=0.5) as server:
        yield server


def test_asyncio_overlaps_requests_inside_one_client_session(ip, run, site):
    ip.user_ns["base"] = site.url("/page/")
    outcome = run(
        "%%parallel -b asyncio\nimport aiohttp\ntitles = []\n"
        "async with aiohttp.ClientSession() as session:\n"
        "    for n in range(50):\n"
        "        async with session.get(f'{base}{n}') as response:\n"
        "            titles.append((await response.text()).split('<title>')[1].split('<')[0])\n"
    )
    assert outcome.error is None, outcome.out + outcome.err
    assert ip.user_ns["titles"] == [str(n) for n in range(50)]
    assert len(site.windows) == 50
    assert site.max_overlap() >= 40  # the server saw the requests at the same time


def test_asyncio_limits_concurrency_to_workers(ip, run, site):
    ip.user_ns["base"] = site.url("/page/")
    site.latency = 0.1
    outcome = run(
        "%%parallel -b asyncio -w 3\nimport aiohttp\nasync with aiohttp.ClientSession() as s:\n"
        "    for n in range(9):\n        async with s.get(f'{base}{n}') as r:\n            await r.text()\n"
    )
    assert outcome.error is None
    assert site.max_overlap() == 3


def test_a_body_without_await_warns_on_asyncio(ip, run):
    outcome = run("%%parallel -b asyncio\nsquares = [n * n for n in range(5)]\n")
    assert outcome.error is None and ip.user_ns["squares"] == [0, 1, 4, 9, 16]
    assert "the loop body never awaits" in outcome.err


@pytest.mark.parametrize(
    "setup, cell, chosen",
    [
        ("", "calls = []\nfor i in range(10):\n    calls.append(i)\n", "serial"),
        (
            "def spin(n):\n    t = 0\n    for k in range(300_000):\n        t += k % (n + 1)\n    return t\n",
            "calls = []\nfor i in range(40):\n    calls.append(i)\n    spin(i)\n",
            "processes",
        ),
        (
            "import time\n",
            "calls = []\nfor i in range(40):\n    time.sleep(0.02)\n    calls.append(i)\n",
            "threads",
        ),
        (
            "import asyncio\n",
            "calls = []\nfor i in range(10):\n    await asyncio.sleep(0.01)\n    calls.append(i)\n",
            "asyncio",
        ),
    ],
    ids=["trivial-serial", "cpu-processes", "sleep-threads", "await-asyncio"],
)
def test_auto_chooses_from_the_code_and_a_probe(ip, run, setup, cell, chosen):
    run(setup)
    outcome = run(f"%%parallel\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    assert report().backend == chosen
    assert ip.user_ns["calls"] == list(range(len(ip.user_ns["calls"])))  # no item ran twice
    if chosen != "asyncio":
        assert f"auto chose {chosen}: " in outcome.out


def test_auto_keeps_a_computing_loop_that_cannot_travel_in_the_kernel(ip, run):
    """Threads would run one item's Python at a time: no faster than the kernel."""
    run("import threading\nlock = threading.Lock()\n")
    cell = "calls = []\nfor i in range(40):\n    with lock:\n        t = sum(k for k in range(400_000))\n    calls.append(i)\n"
    outcome = run(f"%%parallel\n{cell}")
    assert outcome.error is None and report().backend == "serial", outcome.out
    assert "cannot go to processes (the loop uses `lock`" in outcome.out
    assert ip.user_ns["calls"] == list(range(40))


def test_auto_stays_lazy_for_a_generator_expression(ip, run):
    """The lead-in hands each item's value on as it is done: a consumer that stops early
    stops the loop early, as with the plain generator expression."""
    run("import itertools\n")
    outcome = run("%%parallel -q\nfound = next(x for x in itertools.count() if x > 5)\n")
    assert outcome.error is None, outcome.err
    assert ip.user_ns["found"] == 6
    assert report().item_count < 100  # the endless loop did not run on

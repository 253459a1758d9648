"""Errors and refusals: the user's own exception, the serial prefix, clear words."""

from __future__ import annotations

import pytest
from conftest import report
from IPython.core.error import UsageError

from parmagic import errors


def rendered(error: BaseException) -> str:
    return "\n".join(error._render_traceback_())


def test_failing_item_raises_its_own_exception_after_the_serial_prefix(ip, run, backend):
    run("def risky(i):\n    return 10 // (i - 5)\n")
    outcome = run(
        f"%%parallel {backend}\nresults = []\nfor i in range(12):\n"
        "    results.append(i)\n    results.append(risky(i))\nafter = True\n"
    )
    assert isinstance(outcome.error, ZeroDivisionError)
    serial = []
    for i in range(5):
        serial += [i, 10 // (i - 5)]
    assert ip.user_ns["results"] == [*serial, 5]  # the failing item's own first append too
    assert ip.user_ns["i"] == 5 and "after" not in ip.user_ns
    text = rendered(outcome.error)
    assert "results.append(risky(i))" in text  # the cell's line
    assert "return 10 // (i - 5)" in text  # the notebook function's line
    assert "item 5 of the parallel loop (5)" in text
    assert "parmagic" not in text.replace("parallel loop", "")  # no internal frames
    assert report().stopped_at == 5 and "stopped at item 5" in outcome.out


def test_on_error_continue_runs_every_item_and_lists_failures(ip, run, backend):
    outcome = run(
        f"%%parallel {backend} --on-error continue\nok = []\nfor i in range(10):\n"
        "    ok.append(i)\n    if i % 4 == 1:\n        raise ValueError(f'bad {i}')\n"
    )
    assert outcome.error is None
    assert ip.user_ns["ok"] == [0, 2, 3, 4, 6, 7, 8]
    assert [(index, message) for index, _, message in report().failures] == [
        (1, "ValueError('bad 1')"), (5, "ValueError('bad 5')"), (9, "ValueError('bad 9')")
    ]  # fmt: skip
    assert "3 items failed" in outcome.out


def test_replay_failure_is_the_items_error(ip, run, backend):
    outcome = run(f"%%parallel {backend}\nd = {{'a': 0}}\nfor k in 'aab':\n    d[k] += 1\n")
    assert isinstance(outcome.error, KeyError)
    assert ip.user_ns["d"] == {"a": 2}
    assert "d[k] += 1" in rendered(outcome.error)


@pytest.mark.parametrize(
    "cell, fragment",
    [
        ("for x in range(3):\n    if x > 1:\n        break\n", "line 5: `break`"),
        ("total = 0\nfor x in range(3):\n    if total > 1:\n        pass\n    total += x\n",
         "line 5: the body reads `total`"),
        ("seen = set()\nfor x in [1, 1]:\n    if x not in seen:\n        seen.add(x)\n",
         "line 5: the body reads `seen`"),
        ("for x in range(3):\n    print(flag)\n    flag = x\n", "line 4: the body reads `flag` before"),
        ("for x in range(2):\n    pass\nfor y in range(2):\n    pass\n", "lines 3, 5"),
        ("x = 1\n", "found no loop"),
    ],
)  # fmt: skip
def test_refusals_name_the_line_and_run_nothing(ip, run, cell, fragment):
    outcome = run(f"%%parallel -b threads\nmarker = 'ran'\n{cell}")
    assert isinstance(outcome.error, UsageError)
    assert fragment in str(outcome.error)
    assert "marker" not in ip.user_ns


def test_await_is_refused_on_plain_backends(run):
    outcome = run(
        "%%parallel -b threads\nimport asyncio\nfor x in range(3):\n    await asyncio.sleep(0)\n"
    )
    assert isinstance(outcome.error, UsageError)
    assert "line 4: the loop body uses `await`" in str(outcome.error)


def test_syntax_error_points_at_the_cells_line(run):
    outcome = run("%%parallel\nx = 1\nfor i in range(3)\n    pass\n")
    assert isinstance(outcome.error, SyntaxError)
    assert outcome.error.lineno == 3


@pytest.mark.parametrize(
    "options, fragment",
    [
        (
            "-b thread",
            "invalid choice: 'thread' (choose from 'serial', 'threads', 'futures', 'processes'",
        ),
        ("--workers 0", "--workers must be 1 or more"),
        ("--on-error ignore", "invalid choice: 'ignore'"),
        ("--frobnicate", "unrecognized arguments: --frobnicate"),
        ("-b threads --start-method spawn", "--start-method applies to worker processes"),
        ("-b serial --start-method fork", "serial starts none"),
        ("-b threads --export /no/such/folder/f.py", "--export cannot write"),
    ],
)
def test_bad_options_print_usage_without_traceback(run, options, fragment):
    outcome = run(f"%%parallel {options}\nfor i in range(2):\n    pass\n")
    assert isinstance(outcome.error, UsageError)
    assert fragment in str(outcome.error)
    assert "Traceback" not in outcome.out + outcome.err


def test_line_magic_without_statement_is_a_usage_error(run):
    outcome = run("%parallel -b threads")
    assert isinstance(outcome.error, UsageError)
    assert "needs a statement" in str(outcome.error)


@pytest.mark.parametrize(
    "setup, kind",
    [
        ("import threading\nthing = threading.Lock()\n", "lock"),
        ("thing = (n for n in range(3))\n", "generator"),
        ("thing = open(__import__('os').devnull)\n", "TextIOWrapper"),
    ],
)
def test_unpicklable_capture_is_refused_before_any_item(ip, run, setup, kind):
    run(setup)
    outcome = run(
        "%%parallel -b processes -w 2\nstarted = []\nfor i in range(3):\n"
        "    started.append(i)\n    print(thing)\n"
    )
    assert isinstance(outcome.error, UsageError)
    message = str(outcome.error)
    assert message.startswith(f"the loop uses `thing` (a {kind})")
    assert "--backend threads" in message
    assert ip.user_ns["started"] == []
    assert "parmagic:" not in outcome.out  # nothing ran: no summary of nothing
    run("close = getattr(thing, 'close', None)\nif close:\n    close()\n")


def test_an_unwritable_export_path_is_refused_before_anything_runs(ip, run):
    outcome = run(
        "%%parallel -b threads --export /no/such/folder/f.py\nran = []\nfor i in range(3):\n"
        "    ran.append(i)\n"
    )
    assert isinstance(outcome.error, UsageError)
    assert "/no/such/folder" in str(outcome.error)
    assert "ran" not in ip.user_ns  # not even the statements before the loop
    assert "Traceback" not in outcome.out + outcome.err


def test_kernel_stays_usable_after_errors(ip, run, backend):
    run(f"%%parallel {backend}\nfor i in range(3):\n    1 / 0\n")
    run("%%parallel -b nope\nfor i in range(3):\n    pass\n")
    outcome = run(f"%%parallel {backend}\nsquares = [i * i for i in range(5)]\n")
    assert outcome.error is None and ip.user_ns["squares"] == [0, 1, 4, 9, 16]


def test_messages_are_constants():
    assert "{line}" in errors.BREAK_REFUSED and "{name}" in errors.NOT_PICKLABLE

"""A kernel killed mid-run (SIGKILL: the out-of-memory killer, a crash) leaves no worker behind.

A real ``python3`` kernel starts a run whose items each sleep; once two workers are running
items, every descendant of the kernel process is recorded (workers, a forkserver, multiprocessing's
resource tracker, dask's worker processes) and the kernel is killed. Within 5 s each recorded
process must be gone (or a zombie, dead and waiting for whoever adopted it to reap it).
Survivors are killed afterwards either way, and the kernel itself is reaped.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from contextlib import suppress

import psutil
import pytest
from conftest import a_kernel

from parmagic.worker.shared_files import PREFIX, folder

CASES = {
    "processes-fork": "-b processes -w 2 --start-method fork",
    "processes-forkserver": "-b processes -w 2 --start-method forkserver",
    "futures-spawn": "-b futures:processes -w 2 --start-method spawn",
    "dask": "-b dask -w 2",
}
HELPERS = ("forkserver", "resource_tracker")  # multiprocessing's, not workers
STARTUP = 30  # seconds for the workers to start running items (a dask cluster included)
GONE_WITHIN = 5  # seconds after the kernel's death


def execute(kc, code: str, **kwargs) -> dict:
    reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None, **kwargs)
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply["content"]


def kernel_process(km, kc) -> psutil.Process:
    """The ipykernel process itself, as it reports its pid (whatever launched it), checked to
    be the process the manager started or one of its descendants."""
    content = execute(kc, "import os", user_expressions={"pid": "os.getpid()"})
    pid = int(content["user_expressions"]["pid"]["data"]["text/plain"])
    launched = psutil.Process(km.provisioner.pid)
    assert pid == launched.pid or pid in {p.pid for p in launched.children(recursive=True)}
    return psutil.Process(pid)


def is_helper(process: psutil.Process, kernel: psutil.Process) -> bool:
    """The kernel's forkserver or resource tracker; not the forkserver's children (workers),
    which carry its command line."""
    try:
        return process.ppid() == kernel.pid and any(
            h in " ".join(process.cmdline()) for h in HELPERS
        )
    except psutil.Error:
        return False


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_running_items(kernel: psutil.Process, marks) -> list[psutil.Process]:
    """Poll until two workers run items (each item marks its process in ``marks``) and the
    kernel has two non-helper descendants; then every descendant of the kernel."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        descendants = kernel.children(recursive=True)
        workers = [p for p in descendants if not is_helper(p, kernel)]
        running = {int(path.name) for path in marks.iterdir()}
        if len(workers) >= 2 and len(running) >= 2:
            assert running <= {p.pid for p in descendants}, "items ran outside the kernel's tree"
            return descendants
        time.sleep(0.05)
    pytest.fail(f"no two workers running items after {STARTUP} s: {descendants}, {running}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CASES))
def test_every_worker_ends_within_five_seconds_of_the_kernels_death(tmp_path, name):
    if name == "dask":
        pytest.importorskip("distributed")
    marks = tmp_path / "marks"
    marks.mkdir()
    descendants: list[psutil.Process] = []
    kernel = None
    try:
        with a_kernel(str(tmp_path), now=True) as (km, kc):  # now: reaps the dead kernel
            try:
                kernel = kernel_process(km, kc)
                execute(kc, f"%load_ext parmagic\nimport pathlib, time\nmarks = {str(marks)!r}")
                kc.execute(  # not waited for: the kernel dies in the middle of this run
                    f"%%parallel {CASES[name]} -q\nfor i in range(1000):\n"
                    "    pathlib.Path(marks, str(os.getpid())).touch()\n    time.sleep(0.2)\n"
                )
                descendants = wait_for_running_items(kernel, marks)
                if name == "processes-forkserver":
                    assert any(
                        is_helper(p, kernel) and "forkserver" in " ".join(p.cmdline())
                        for p in descendants
                    )
                os.kill(kernel.pid, signal.SIGKILL)
                deadline = time.monotonic() + GONE_WITHIN
                while time.monotonic() < deadline and not all(gone(p) for p in descendants):
                    time.sleep(0.05)
                survivors = [p for p in descendants if not gone(p)]
                assert not survivors, (
                    f"alive {GONE_WITHIN} s after the kernel's death: "
                    + ", ".join(f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in survivors)
                )
            finally:
                if kernel is not None:  # the test failed before its record, or spawned more since
                    with suppress(psutil.Error):
                        descendants += kernel.children(recursive=True)
                for process in descendants:
                    with suppress(psutil.Error):
                        process.kill()
    finally:
        if kernel is not None:  # a task file in shared memory that the kernel could not remove
            for path in glob.glob(os.path.join(folder(), f"{PREFIX}{kernel.pid}-*")):
                os.unlink(path)

"""Run locks and claims: a process that dies holding one (SIGKILL) leaves its owner line, which the next taker
finds; one that lets go leaves nothing. Checked with real processes and the operating system's own locks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from covfuse.training.lock import Claim, RunBusy, RunLock, holder, left_by_dead

pytest.importorskip("fcntl", reason="runs are not locked where fcntl does not exist")

HOLD = """
import sys
from covfuse.training.lock import Claim
claim = Claim(sys.argv[1])
print("held", flush=True)
if sys.argv[2] == "release":
    claim.release()
    print("released", flush=True)
sys.stdin.readline()  # until the test closes stdin, or kills this process
"""


def _holder(path: Path, how: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).parents[2] / "src"),
                                                                    os.environ.get("PYTHONPATH", "")] if p)}
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path), how], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_claim_whose_owner_was_killed_names_it_and_a_released_one_names_nobody(tmp_path):
    path = tmp_path / ".s0.claim"
    child = _holder(path, "hold")
    try:
        assert holder(path).startswith(f"pid {child.pid} on ")  # alive: held, not dead
        assert left_by_dead(path) is None
        with pytest.raises(RunBusy):
            Claim(path, attempts=1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert holder(path) is None  # the operating system let go of the lock ...
    dead = left_by_dead(path)  # ... but the owner line stayed
    assert dead is not None and dead.startswith(f"pid {child.pid} on ")
    with Claim(path, attempts=1) as claim:  # the next taker learns who died
        assert claim.previous == dead
    assert left_by_dead(path) is None and path.read_text() == ""  # let go cleanly: nothing left behind

    child = _holder(tmp_path / ".s1.claim", "release")
    try:
        assert child.stdout.readline().strip() == "released"
        assert left_by_dead(tmp_path / ".s1.claim") is None
        with Claim(tmp_path / ".s1.claim", attempts=1) as claim:
            assert claim.previous is None
    finally:
        child.kill()
        child.wait(timeout=60)


def test_a_run_lock_left_by_a_dead_owner_is_taken_and_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("pid 4242 on node7 since 2026-12-03 10:14:03\n")  # what a killed fit leaves
    assert left_by_dead(run / ".lock") == "pid 4242 on node7 since 2026-12-03 10:14:03"
    with RunLock(run) as lock:
        assert lock.previous == "pid 4242 on node7 since 2026-12-03 10:14:03"
        assert holder(run / ".lock").startswith(f"pid {os.getpid()} on ")
    assert left_by_dead(run / ".lock") is None

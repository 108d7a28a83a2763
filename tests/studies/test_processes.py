"""One study, many processes, and states that end: real `covfuse` processes share a new study (its MLflow store)
and one search, each run and trial trained once; a process killed with SIGKILL leaves its trial or run marked
killed by the next command, in the study, in Optuna's journal and in the trackers, whose parents then end."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from covfuse.cli.main import main as covfuse
from data_fixtures import tiny_study_config

pytest.importorskip("mlflow", reason="covfuse[mlflow] is not installed")
optuna = pytest.importorskip("optuna", reason="covfuse[search] is not installed")

# A `covfuse` process with two test hooks, both waiting on files the test creates (polled, with a deadline):
# COVFUSE_TEST_BARRIER=DIR: the first time it opens the MLflow store, wait until 2 processes have got there, so
#   both open a new store at the same moment; COVFUSE_TEST_HOLD=NAME: the fit of the run or trial folder NAME
#   prints "HELD NAME" at its second batch, then waits for the file COVFUSE_TEST_GO (or for SIGKILL).
CHILD = r"""
import os, sys, time
from pathlib import Path

from covfuse.cli.main import main
from covfuse.training import run as runmod
from covfuse.training import tracking


def wait_for(done, seconds=300):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


barrier = os.environ.get("COVFUSE_TEST_BARRIER")
if barrier:
    real_open = tracking.open_store

    def open_store(*args, **kwargs):
        if not getattr(open_store, "met", False):
            open_store.met = True
            Path(barrier, str(os.getpid())).touch()
            wait_for(lambda: len(list(Path(barrier).iterdir())) >= 2)
        return real_open(*args, **kwargs)

    tracking.open_store = open_store

hold = os.environ.get("COVFUSE_TEST_HOLD")
if hold:
    from lightning.pytorch.callbacks import Callback

    real_fit = runmod.fit_run

    class Hold(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                print(f"HELD {hold}", flush=True)
                go = os.environ.get("COVFUSE_TEST_GO")
                wait_for(lambda: go and Path(go).exists())

    def fit_run(config, **kwargs):
        if config.name == hold:
            kwargs["callbacks"] = [*kwargs.get("callbacks", ()), Hold()]
        return real_fit(config, **kwargs)

    runmod.fit_run = fit_run
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_study_config(tmp_path_factory, max_epochs=1)


def _env(**hooks) -> dict:
    src = str(Path(__file__).parents[2] / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "COVFUSE_TEST_"))}
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH", "")] if p),
            **{f"COVFUSE_TEST_{k.upper()}": str(v) for k, v in hooks.items()}}


def _start(args, **hooks) -> subprocess.Popen:
    """A covfuse child process, its stderr merged into its stdout."""
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(**hooks))


class Output:
    """The lines of several children, read as they come (threads), so none blocks on a full pipe."""

    def __init__(self, children):
        self.lines: list[list[str]] = [[] for _ in children]
        self.queue: queue.Queue = queue.Queue()
        self.threads = [threading.Thread(target=self._read, args=(i, c), daemon=True) for i, c in enumerate(children)]
        for thread in self.threads:
            thread.start()

    def _read(self, i: int, child: subprocess.Popen) -> None:
        for line in child.stdout:
            self.lines[i].append(line)
            self.queue.put((i, line))
        self.queue.put((i, None))

    def wait_for(self, text: str, timeout: float = 600) -> int:
        """The index of the first child to print a line starting with ``text``; fails if all end before."""
        ended = set()
        while len(ended) < len(self.lines):
            i, line = self.queue.get(timeout=timeout)
            if line is None:
                ended.add(i)
            elif line.startswith(text):
                return i
        pytest.fail(f"no child printed {text!r}: " + " | ".join("".join(out)[-3000:] for out in self.lines))

    def text(self, i: int) -> str:
        self.threads[i].join(timeout=600)
        return "".join(self.lines[i])


def _held(child: subprocess.Popen) -> str:
    """Read the child's output until it says it is held (its whole output so far, for the failure message)."""
    seen = []
    for line in child.stdout:
        seen.append(line)
        if line.startswith("HELD "):
            return "".join(seen)
    child.wait(timeout=60)
    pytest.fail(f"the child ended (status {child.returncode}) before it was held: {''.join(seen)[-3000:]}")


def _fits(folder: Path) -> int:
    """How often a run folder was trained: the line each fit writes first into its log.txt."""
    return len(re.findall(rf"^\S+ \S+ .*run {re.escape(folder.name)} in ", (folder / "log.txt").read_text(), re.M))


def _status(study: Path, capsys) -> dict:
    capsys.readouterr()
    assert covfuse(["status", str(study), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _mlflow(study: Path) -> dict[str, object]:
    """The study's MLflow runs by name, read with MLflow's own client from the study's default store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study.name)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], max_results=1000)}


def _trials(study: Path, cell: str = "base"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study / "optuna.journal")))
    return optuna.load_study(study_name=cell, storage=storage).get_trials()


def _search(base, runs, name, trials, loggers):
    return ["sweep", "--config", str(base), "--name", name, "--runs-dir", str(runs), "--search", "optuna",
            "--trials", str(trials), "--tune", "optim.lr=log:1e-4..1e-2", "--trainer.logger", loggers]


def test_two_processes_share_one_new_study_with_mlflow_and_one_search_and_train_each_trial_and_run_once(
        base, tmp_path, capsys):
    runs, barrier, go = tmp_path / "runs", tmp_path / "barrier", tmp_path / "go"
    barrier.mkdir()
    args = _search(base, runs, "hunt", 2, "[csv,mlflow]")
    study = runs / "hunt"
    # both open the new MLflow store at the same moment; whichever trains trial 0 is held in it until `go` exists
    children = [_start(args, barrier=barrier, hold="t000", go=go) for _ in range(2)]
    output = Output(children)
    try:
        held = output.wait_for("HELD t000")
        other = 1 - held  # it claims trial 1, never the live trial 0
        status = _status(study, capsys)
        assert status["trials"]["counts"]["running"] >= 1 and status["trials"]["counts"]["failed"] == 0
        assert children[other].wait(timeout=600) == 0, output.text(other)[-3000:]
        out = output.text(other)
        assert "trial 1: training" in out and "trial 0" not in out
        assert "left to the other process(es) searching or training them, not waited for: base/s0" in out
        status = _status(study, capsys)  # trial 1 done, trial 0 still training in the held process
        assert status["trials"]["counts"] == {"done": 1, "running": 1, "pending": 0, "pruned": 0, "failed": 0}
        assert status["counts"]["done"] == 0
        go.touch()
        assert children[held].wait(timeout=600) == 0, output.text(held)[-3000:]
    finally:
        for child in children:
            child.kill()
    out = output.text(held)
    assert "trial 0: valid loss" in out and "trial 1" not in out and "base/s0: training" in out
    assert not any("already exists" in output.text(i) for i in (0, 1))  # no race over MLflow's schema
    with sqlite3.connect(study / "mlflow.db") as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
    assert "runs" in tables and not [t for t in tables if t.startswith("_alembic_tmp")]
    # each trial and run trained once (the line a fit writes first into its log), by one of the two
    assert [(t.number, t.state.name) for t in _trials(study)] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert [_fits(study / "base" / "trials" / t) for t in ("t000", "t001")] == [1, 1]
    assert _fits(study / "base" / "s0") == 1
    found = _mlflow(study)
    assert set(found) == {"hunt", "base", "base/t000", "base/t001", "base/s0"}
    assert {name: r.info.status for name, r in found.items()} == dict.fromkeys(found, "FINISHED")
    assert {found[n].data.tags["state"] for n in ("base/t000", "base/t001", "base/s0")} == {"complete"}
    assert _status(study, capsys)["counts"] == {"done": 1, "running": 0, "interrupted": 0, "failed": 0, "pending": 0}


def _hparams(board: Path) -> tuple[dict, int]:
    """A run's TensorBoard HParams record (setting -> value) and its session's end status, as the plugin reads
    them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(board), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}, end.status


def _kill(child: subprocess.Popen) -> int:
    _held(child)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    return child.pid


# A process that claims a study run as a sweep does, then waits (until the test kills it)
CLAIMER = """
import sys
from covfuse.training.lock import Claim
claim = Claim(sys.argv[1])
print("HELD s0", flush=True)
sys.stdin.readline()
"""


def test_a_killed_trial_and_a_killed_run_are_marked_killed_by_the_next_command_and_their_parents_end(
        base, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="covfuse[tensorboard] is not installed")
    from tensorboard.plugins.hparams import api_pb2

    runs = tmp_path / "runs"
    args = _search(base, runs, "cut", 1, "[csv,mlflow,tensorboard]")
    study = runs / "cut"
    _kill(_start(args, hold="t000"))  # SIGKILL in the middle of trial 0: the journal still says running
    assert _trials(study)[0].state.name == "RUNNING"

    status = _status(study, capsys)  # the next command marks it
    assert status["trials"]["counts"] == {"done": 0, "running": 0, "pending": 1, "pruned": 0, "failed": 1}
    [trial] = _trials(study)
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True  # the search retries its settings
    found = _mlflow(study)
    assert (found["base/t000"].info.status, found["base/t000"].data.tags["state"]) == ("KILLED", "killed")
    assert found["base"].info.status == found["cut"].info.status == "KILLED"  # nothing of theirs runs any more
    settings, end = _hparams(study / "base" / "trials" / "t000" / "tensorboard")
    assert (settings["state"], settings["trial"], end) == ("killed", 0, api_pb2.STATUS_FAILURE)

    # a process that claimed the study run s0 (as a sweep does before it trains it) is killed too
    claimer = subprocess.Popen([sys.executable, "-c", CLAIMER, str(study / "base" / ".s0.claim")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    pid = _kill(claimer)
    [row] = _status(study, capsys)["runs"]
    assert row["state"] == "failed" and row["error"].startswith(f"killed: its process (pid {pid} on ")
    assert row["error"].endswith("ended without finishing it (SIGKILL, a crash or a lost node); the study's command "
                                 "trains it again")

    assert covfuse(args) == 0  # the same command finishes the study: trial 0's settings again, then s0
    status = _status(study, capsys)
    assert status["counts"] == {"done": 1, "running": 0, "interrupted": 0, "failed": 0, "pending": 0}
    assert status["trials"]["counts"] == {"done": 1, "running": 0, "pending": 0, "pruned": 0, "failed": 1}
    assert _trials(study)[1].user_attrs["retry_of"] == 0
    found = _mlflow(study)
    assert found["base/t001"].info.status == "FINISHED" and found["base/t001"].data.tags["state"] == "complete"
    assert found["base"].info.status == found["cut"].info.status == "FINISHED"
    assert found["base/t000"].info.status == "KILLED"  # the killed trial keeps its state
    settings, end = _hparams(study / "base" / "s0" / "tensorboard")  # the run's record says how it ended now
    assert (settings["state"], end) == ("complete", api_pb2.STATUS_SUCCESS)
    assert len(list((study / "base" / "s0" / "tensorboard").glob("*.hparams"))) == 1


def test_a_run_with_an_unreadable_checkpoint_says_so_in_whole_words_and_trains_again_once_its_folder_is_gone(
        base, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["sweep", "--config", str(base), "--name", "bad", "--runs-dir", str(runs)]
    assert covfuse(args) == 0
    run = runs / "bad" / "base" / "s0"
    (run / "metrics.json").unlink()  # an interrupted run, whose checkpoint is then damaged
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert covfuse(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    [row] = _status(runs / "bad", capsys)["runs"]
    message = row["error"]  # the whole message, as fit_run said it
    assert row["state"] == "failed" and "not a readable checkpoint" in message
    assert message.endswith("copy it again, or delete it to train the run from its beginning")
    reason = err.split(f"(first: {run}: ", 1)[1].rsplit("); fix the cause", 1)[0]
    assert reason == message or (reason.endswith(" ...") and message.startswith(reason[:-4])
                                 and message[len(reason) - 4] == " ")  # cut, if at all, between words
    import shutil

    shutil.rmtree(run)  # deleting the run folder clears its failure
    [row] = _status(runs / "bad", capsys)["runs"]
    assert (row["state"], row["error"]) == ("pending", None)
    assert not list((runs / "bad" / "base").glob(".s0.failed"))
    assert covfuse(args) == 0 and (run / "metrics.json").is_file()

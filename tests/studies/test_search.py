"""The Optuna search: equal seeded budgets per cell, reproducible trials, pruning from the validation curve."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from covfuse.cli.main import main as covfuse
from covfuse.errors import UserError
from data_fixtures import tiny_study_config

optuna = pytest.importorskip("optuna", reason="covfuse[search] is not installed")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_study_config(tmp_path_factory, max_epochs=2)


def _journal_trials(study_dir: Path, cell: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    return optuna.load_study(study_name=cell, storage=storage).get_trials()


def _sweep(base, runs, name, *extra):
    return covfuse(["sweep", "--config", str(base), "--name", name, "--runs-dir", str(runs), "--search", "optuna",
                    "--trials", "3", "--tune", "optim.lr=log:1e-4..3e-2", "--tune", "optim.weight_decay=0,0.01",
                    "--trainer.max_epochs", "1", *extra])


def test_a_seeded_search_is_reproducible_gives_every_cell_the_same_budget_and_scores_the_best_once_on_test(base, tmp_path):
    runs = tmp_path / "runs"
    assert _sweep(base, runs, "a", "--grid", "model.fusion=image-only,hybrid") == 0
    assert _sweep(base, runs, "b", "--grid", "model.fusion=image-only") == 0
    a, b = runs / "a", runs / "b"
    summary = json.loads((a / "search.json").read_text())
    assert {c: len(s["trials"]) for c, s in summary["cells"].items()} == {"fusion=image-only": 3, "fusion=hybrid": 3}
    # the journal (Optuna's own reader) holds the same trials, and a second search with the same seed repeats them
    first = _journal_trials(a, "fusion=image-only")
    again = _journal_trials(b, "fusion=image-only")
    assert [t.params for t in first] == [t.params for t in again] and len(first) == 3
    assert [t.value for t in first] == pytest.approx([t.value for t in again], rel=1e-6)
    best = min((t for t in first if t.value is not None), key=lambda t: t.value)
    assert summary["cells"]["fusion=image-only"]["best"]["params"] == best.params
    assert json.loads((b / "search.json").read_text())["cells"]["fusion=image-only"]["best"]["params"] == best.params
    # every cell starts from the same seeded trials (TPE's random start), so the methods see the same settings
    assert [t.params for t in _journal_trials(a, "fusion=hybrid")] == [t.params for t in first]
    # trials are scored on valid only; the study run with the best settings is scored on test, and (CPU,
    # same seed) retrains exactly the best trial's model
    assert [t.state for t in first] == [t.state for t in again]
    for t in (t for t in first if t.state == optuna.trial.TrialState.COMPLETE):
        metrics = json.loads((a / "fusion=image-only" / "trials" / f"t{t.number:03d}" / "metrics.json").read_text())
        assert "test" not in metrics and metrics["valid"]["loss"] == pytest.approx(t.value, rel=1e-6)
    final = json.loads((a / "fusion=image-only" / "s0" / "metrics.json").read_text())
    assert "test" in final and final["valid"]["loss"] == pytest.approx(best.value, rel=1e-5)
    config = yaml.safe_load((a / "fusion=image-only" / "s0" / "config.yaml").read_text())
    assert config["optim"]["lr"] == pytest.approx(best.params["optim.lr"])
    # the report shows each cell's budget, best settings and the spread over trials
    assert covfuse(["report", str(a), "--format", "html", "--bootstrap", "200"]) == 0
    text = (a / "report.md").read_text()
    page = (a / "report.html").read_text()
    assert "Search (equal budget per method)" in page and page.count("<td>fusion=hybrid</td>") >= 2
    hybrid = summary["cells"]["fusion=hybrid"]
    assert "## Search (equal budget per method)" in text
    assert f"| fusion=hybrid | 3 | {hybrid['complete']} / {hybrid['pruned']} / 0 |" in text
    report = json.loads((a / "report.json").read_text())
    assert report["search"]["cells"]["fusion=hybrid"]["budget"] == 3


def test_a_search_for_the_lowest_validation_brier_score_minimises_it(base, tmp_path):
    """--monitor val/brier: Optuna minimises each trial's valid Brier score (metrics.json's), lower being better."""
    runs = tmp_path / "runs"
    assert covfuse(["sweep", "--config", str(base), "--name", "b", "--runs-dir", str(runs), "--search", "optuna",
                    "--trials", "2", "--tune", "optim.lr=1e-4,3e-2", "--trainer.max_epochs", "1",
                    "--monitor", "val/brier"]) == 0
    summary = json.loads((runs / "b" / "search.json").read_text())
    assert (summary["objective"], summary["direction"]) == ("valid brier", "minimize")
    cell = next(iter(summary["cells"]))
    trials = _journal_trials(runs / "b", cell)
    valid = {t.number: json.loads((runs / "b" / cell / "trials" / f"t{t.number:03d}" / "metrics.json").read_text())
             ["valid"]["brier"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert valid and {t.number: t.value for t in trials if t.number in valid} == pytest.approx(valid, rel=1e-6)
    assert summary["cells"][cell]["best"]["number"] == min(valid, key=valid.get)


def test_pruning_stops_a_diverging_trial_after_its_first_validation(base, tmp_path):
    from covfuse.studies import search
    from covfuse.studies.sweep import plan_study, write_study

    study = plan_study(name="p", configs=[str(base)], runs_dir=tmp_path, overrides=["--trainer.max_epochs", "3"])
    write_study(study)
    storage = search.storage(study)
    o = optuna.create_study(study_name="base", storage=storage, direction="minimize")
    for lr in (1e-3, 2e-3, 1e4):  # two sane trials, then one whose loss explodes
        o.enqueue_trial({"optim.lr": lr})
    search.run_search(study, {"optim.lr": ["0.001", "0.002", "10000.0"]}, 3)
    trials = _journal_trials(tmp_path / "p", "base")
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    diverging = trials[2]
    assert list(diverging.intermediate_values) == [0]  # reported once, then stopped
    folder = tmp_path / "p" / "base" / "trials" / "t002"
    with open(folder / "metrics.csv", newline="") as f:
        epochs = [r for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(epochs) == 1 and not (folder / "metrics.json").exists()
    with open(tmp_path / "p" / "base" / "trials" / "t000" / "metrics.csv", newline="") as f:
        assert len([r for r in csv.DictReader(f) if r.get("val/loss")]) == 3
    summary = json.loads((tmp_path / "p" / "search.json").read_text())["cells"]["base"]
    assert (summary["complete"], summary["pruned"], summary["budget"]) == (2, 1, 3)


def test_a_bad_space_is_one_line():
    from covfuse.studies.search import parse_space

    with pytest.raises(UserError, match=r"a range is LO..HI"):
        parse_space({"optim.lr": ["log:0..1"]})
    space = parse_space({"optim.lr": ["log:1e-4..1e-2"], "data.batch_size": ["8..32"], "model.fusion": ["a", "b"]})
    assert space["optim.lr"].log and (space["optim.lr"].low, space["optim.lr"].high) == (1e-4, 1e-2)
    assert isinstance(space["data.batch_size"], optuna.distributions.IntDistribution)
    assert space["model.fusion"].choices == ("a", "b")


def test_a_failing_trial_does_not_spend_the_budget(base, tmp_path):
    from covfuse.studies import search
    from covfuse.studies.sweep import plan_study, write_study

    study = plan_study(name="f", configs=[str(base)], runs_dir=tmp_path, overrides=["--trainer.max_epochs", "1"])
    write_study(study)
    o = optuna.create_study(study_name="base", storage=search.storage(study), direction="minimize")
    o.enqueue_trial({"optim.lr": -1.0})  # refused by the run's own checks: the trial fails, another is drawn
    o.enqueue_trial({"optim.lr": 1e-3})
    summary = search.run_search(study, {"optim.lr": ["-1.0", "0.001"]}, 1)
    assert [t.state.name for t in _journal_trials(tmp_path / "f", "base")] == ["FAIL", "COMPLETE"]
    cell = summary["cells"]["base"]
    assert (cell["complete"], cell["fail"], cell["best"]["params"]) == (1, 1, {"optim.lr": 1e-3})


# Run in a child process: the search, with trial 1 of the first cell held at its second batch until a SIGINT (sent
# by the test) has reached covfuse's own handler, so the signal lands mid-trial every time.
INTERRUPTING = """
import sys, time
from covfuse.cli.main import main
from covfuse.studies import search
from covfuse.training.resume import Interruption

real = search.pruning_callback


def pruning_callback(trial, monitor):
    callback = real(trial, monitor)
    if trial.number != 1 or trial.study.study_name != "fusion=image-only":
        return callback

    class HeldAtBatch(type(callback)):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                handler = next(c for c in trainer.callbacks if isinstance(c, Interruption))
                print("MID-TRIAL", flush=True)
                deadline = time.monotonic() + 120
                while handler.received is None and time.monotonic() < deadline:
                    time.sleep(0.02)

    return HeldAtBatch()


search.pruning_callback = pruning_callback
sys.exit(main(sys.argv[1:]))
"""


def test_an_interrupted_search_continues_with_new_settings_and_never_retrains_a_finished_trial(base, tmp_path, capsys):
    import os
    import shlex
    import signal
    import subprocess
    import sys

    runs = tmp_path / "runs"
    args = ["sweep", "--config", str(base), "--name", "cut", "--runs-dir", str(runs), "--search", "optuna",
            "--trials", "3", "--tune", "optim.lr=log:1e-4..3e-2", "--grid", "model.fusion=image-only,hybrid",
            "--trainer.max_epochs", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTING, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == "MID-TRIAL":
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 130, err[-2000:]
    study = runs / "cut"
    cell = study / "fusion=image-only"
    assert (cell / "trials" / "t001" / "checkpoints" / "last.ckpt").is_file()  # cut off mid-trial, checkpoint saved
    message = err.strip().splitlines()[-1]
    assert "--resume" not in message and "trial 1" in message
    command = shlex.split(message.split("continue with: ", 1)[1])
    assert command[:2] == ["covfuse", "sweep"] and "--search" in command and "--trials" in command
    before = [(t.number, t.state.name, t.params) for t in _journal_trials(study, "fusion=image-only")]
    assert [b[1] for b in before] == ["COMPLETE", "FAIL"]
    finished = (cell / "trials" / "t000" / "metrics.json").stat().st_mtime_ns
    # covfuse status counts the trials beside the runs: one done, one cut off (failed, to be retried), 2 + 3 to go
    capsys.readouterr()
    assert covfuse(["status", str(study), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["trials"]["counts"] == {"done": 1, "running": 0, "pending": 5, "pruned": 0, "failed": 1}
    assert status["counts"]["pending"] == 2

    assert covfuse(command[1:]) == 0  # the printed command, as a user would paste it

    assert (cell / "trials" / "t000" / "metrics.json").stat().st_mtime_ns == finished  # not retrained
    trials = _journal_trials(study, "fusion=image-only")
    assert [(t.number, t.state.name) for t in trials[:2]] == [(0, "COMPLETE"), (1, "FAIL")]
    assert trials[1].user_attrs["interrupted"] is True
    retry = trials[2]  # the interrupted trial's settings, trained again as a new trial
    assert retry.params == before[1][2] and retry.user_attrs["retry_of"] == 1 and retry.state.name == "COMPLETE"
    budgets = {}
    for name in ("fusion=image-only", "fusion=hybrid"):
        done = [t for t in _journal_trials(study, name) if t.state.name in ("COMPLETE", "PRUNED")]
        budgets[name] = len({json.dumps(t.params, sort_keys=True) for t in done})
        assert len(done) == 3
    assert budgets == {"fusion=image-only": 3, "fusion=hybrid": 3}  # distinct settings, equal budgets
    # the continued search drew what an uninterrupted one draws: the same settings as the other cell
    settings = [sorted(json.dumps(t.params) for t in _journal_trials(study, n) if t.state.name != "FAIL")
                for n in ("fusion=image-only", "fusion=hybrid")]
    assert settings[0] == settings[1]
    capsys.readouterr()
    assert covfuse(["status", str(study), "--format", "json"]) == 0
    counts = json.loads(capsys.readouterr().out)["trials"]["counts"]
    assert (counts["done"] + counts["pruned"], counts["pending"], counts["running"], counts["failed"]) == (6, 0, 0, 1)
    summary = json.loads((study / "search.json").read_text())["cells"]["fusion=image-only"]
    assert (summary["complete"] + summary["pruned"], summary["fail"], summary["interrupted"]) == (3, 1, 1)


def test_status_counts_a_searchs_whole_budget_before_its_first_trial(base, tmp_path, capsys):
    """A search study whose journal does not exist yet (stopped before its first trial) still shows its trials:
    every cell's budget pending, not silence beside "2 pending" runs."""
    from covfuse.studies.sweep import plan_study, write_study

    runs = tmp_path / "runs"
    argv = ["covfuse", "sweep", "--config", str(base), "--name", "early", "--runs-dir", str(runs),
            "--grid", "model.fusion=image-only,film", "--search", "optuna", "--trials", "4"]
    study = plan_study(name="early", configs=[str(base)], runs_dir=runs, grid=["model.fusion=image-only,film"],
                       argv=argv, check_data=False)
    write_study(study)
    assert not (Path(study.study_dir) / "optuna.journal").exists()
    assert covfuse(["status", study.study_dir, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["trials"]["counts"] == {"done": 0, "running": 0, "pending": 8, "pruned": 0, "failed": 0}
    assert covfuse(["status", study.study_dir]) == 0
    assert "search trials: 0 done, 0 running, 8 pending, 0 pruned, 0 failed (4 per cell x 2 cells)" in capsys.readouterr().out
    # a plain sweep (no --search optuna) has no trials line
    plain = plan_study(name="plain", configs=[str(base)], runs_dir=runs, grid=["model.fusion=image-only,film"],
                       argv=argv[:-4], check_data=False)
    write_study(plain)
    assert covfuse(["status", plain.study_dir, "--format", "json"]) == 0
    assert "trials" not in json.loads(capsys.readouterr().out)

"""Self-tuning `auto`: the measuring protocol (fake timings), one decision per signature and machine,
kept on disk and trusted only on the machine that measured it, visible in the log, results exact;
and the hybrid layer under torch.compile (no graph break on the common path, compiled == eager)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from covfuse.layers import HybridConv2d
from covfuse.layers import autotune
from covfuse.layers import hybrid_functional as hf
from covfuse.layers.autotune import Timing, auto_choices, clear_choices, set_autotune
from covfuse.layers.hybrid_functional import rule_backend

from layers.test_hybrid import per_sample_reference


@pytest.fixture(autouse=True)
def fresh_autotune(tmp_path, monkeypatch):
    """No remembered choice, an empty cache folder of this test's own, and a writable one."""
    monkeypatch.setenv("COVFUSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_DISK_OK", True)
    clear_choices()
    yield
    set_autotune(None)
    clear_choices()


def _layer_and_batch(seed: int = 0, n: int = 8):
    torch.manual_seed(seed)
    layer = HybridConv2d(3, 4, 3, 2, padding=1, covariate_init="kaiming").double()
    x = torch.randn(n, 3, 6, 6, dtype=torch.float64)
    c = torch.tensor([[0.0, 1.0], [1.0, 1.0]] * (n // 2), dtype=torch.float64)
    return layer, x, c


FAKE_MS = {"expand": 3.0, "grouped": 2.0, "pattern": 1.5, "unfold": 4.0, "reference": 1.0, "triton": 0.1}


def fake_measure(calls: list | None = None, fake: dict[str, float] = FAKE_MS):
    """A stand-in for autotune.measure: runs each step once (so a failing one fails) and reports ``fake`` ms."""
    def measure(steps, device, splits=frozenset()):
        if calls is not None:
            calls.append(sorted(steps))
        ms, failed = {}, {}
        for name, step in steps.items():
            try:
                step()
                ms[name] = fake[name]
            except Exception as exc:  # noqa: BLE001
                failed[name] = type(exc).__name__
        return Timing(ms, {n: 3 for n in ms}, min(ms, key=ms.get) if ms else None, failed)
    return measure


def test_tuned_choice_is_timed_once_remembered_and_exact(monkeypatch, caplog):
    set_autotune(True)
    calls = []
    monkeypatch.setattr(autotune, "measure", fake_measure(calls))
    layer, x, c = _layer_and_batch()
    with caplog.at_level(logging.INFO, logger="covfuse.layers"):
        out = layer(x, c)
        assert layer.weight.grad is None  # timing ran on detached copies
        out2 = layer(x, c)
    # 2 distinct rows < batch: pattern is a candidate; the per-sample loop always is; triton not off CUDA
    assert calls == [["expand", "grouped", "pattern", "reference", "unfold"]]
    (choice,) = auto_choices()
    assert choice.how == "tuned" and choice.backend == "reference" and len(choice.times_ms) == 5
    assert "batch 8, 2 distinct rows" in choice.signature
    assert "reference (tuned: reference 1.00 ms (3 runs), pattern 1.50 ms" in caplog.text
    want = per_sample_reference(layer, x, c)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out2, want, rtol=1e-10, atol=1e-10)
    grad = torch.autograd.grad(layer(x, c).sum(), layer.covariate_weight)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), layer.covariate_weight)[0])
    # A new signature (another number of distinct rows, no grad) is tuned on its own.
    with torch.no_grad():
        layer(x, torch.randn(8, 2, dtype=torch.float64))
    assert len(auto_choices()) == 2 and calls[1] == ["expand", "grouped", "reference", "unfold"]
    assert "8 distinct rows" in auto_choices()[1].signature and "no grad" in auto_choices()[1].signature


def test_tuning_leaves_the_random_stream_alone(monkeypatch):
    """A run whose choice was tuned (each candidate run, fake timings) and one that read it from the
    cache draw the same random numbers."""
    set_autotune(True)
    monkeypatch.setattr(autotune, "measure", fake_measure())
    layer, x, c = _layer_and_batch()
    torch.manual_seed(1)
    layer(x, c)
    assert auto_choices()[0].how == "tuned"
    tuned = torch.rand(3)
    clear_choices()
    torch.manual_seed(1)
    layer(x, c)
    assert auto_choices()[0].how == "cached"
    assert torch.equal(torch.rand(3), tuned)


def test_candidates_include_the_loop_and_only_back_ends_that_run_here(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # the interpreter (on in the test session) does not make triton a CPU candidate: it is for tests only
    assert hf.auto_candidates(cpu, 8, 2) == ["expand", "grouped", "pattern", "unfold", "reference"]
    assert hf.auto_candidates(cpu, 8, 8) == ["expand", "grouped", "unfold", "reference"]
    assert "reference" not in hf.auto_candidates(cpu, 8, 2, loop=False)  # hyper: never the loop
    monkeypatch.setattr(hf.hybrid_triton, "_HAVE_TRITON", True)
    assert hf.auto_candidates(cuda, 64, 8) == ["expand", "grouped", "pattern", "unfold", "triton", "reference"]
    monkeypatch.setattr(hf.hybrid_triton, "_HAVE_TRITON", False)  # a CUDA build without Triton
    assert "triton" not in hf.auto_candidates(cuda, 64, 8)


def test_tuning_picks_the_fastest_and_drops_a_candidate_that_fails(monkeypatch, caplog):
    """With fake timings the loop is fastest and wins; a candidate that raises is dropped, not picked."""
    set_autotune(True)
    monkeypatch.setattr(autotune, "measure", fake_measure())
    monkeypatch.setattr(hf, "auto_candidates", lambda *a, **k: ["expand", "triton", "grouped", "reference"])
    monkeypatch.delenv("TRITON_INTERPRET")  # triton cannot run on this CPU: its trial call raises
    layer, x, c = _layer_and_batch()
    out = layer(x, c)
    (choice,) = auto_choices()
    assert choice.backend == "reference" and "triton" not in choice.times_ms
    torch.testing.assert_close(out, per_sample_reference(layer, x, c), rtol=1e-10, atol=1e-10)


class FakeClock:
    """Time that advances only when a fake step runs: ``cost[name]`` ms per run (a list: run by run)."""

    def __init__(self, cost: dict[str, list[float]]):
        self.now, self.cost, self.ran = 0.0, cost, {name: 0 for name in cost}

    def step(self, name: str):
        def run():
            if self.cost[name] is None:
                raise RuntimeError(f"{name} cannot run here")
            costs = self.cost[name]
            self.now += costs[min(self.ran[name], len(costs) - 1)] / 1e3
            self.ran[name] += 1
        return run


def test_measure_warms_up_each_candidate_drops_laggards_early_and_failures(monkeypatch):
    """The protocol on fake costs: every candidate warmed up before it is timed; a batch-splitting
    candidate far behind is dropped after its warm-up, a dense one after its first run, one that
    raises at once; the rest are timed in rounds until the leader is clear."""
    cost = {"grouped": [300, 100], "unfold": [120, 110], "expand": [800, 400], "failing": None,
            "pattern": [120, 105, 104, 106], "reference": [1000, 900]}
    fake = FakeClock(cost)
    monkeypatch.setattr(autotune, "clock", lambda device: lambda: fake.now)
    monkeypatch.setattr(autotune, "_sync", lambda device: None)  # no GPU here: the protocol's CUDA rules only
    monkeypatch.setattr(autotune, "BUDGET_S", 100.0)  # the budget has a test of its own
    steps = {name: fake.step(name) for name in cost}
    timing = autotune.measure(steps, torch.device("cuda"), frozenset({"pattern", "reference"}))
    assert timing.best == "grouped" and set(timing.failed) == {"failing"}
    # expand: warm-up + 1 run, then out (400 > 2 x 100); reference: its warm-up only (1000 > 3 x 100)
    assert fake.ran["expand"] == 2 and timing.runs["expand"] == 1 and timing.ms["expand"] == pytest.approx(400)
    assert fake.ran["reference"] == 1 and timing.runs["reference"] == 1
    # the close ones: warm-up + MIN_RUNS timed runs each (unfold is not out after a round: 110 > 1.15 x 100
    # is false, so it stays until the leader is clear)
    assert timing.runs["grouped"] >= autotune.MIN_RUNS and fake.ran["grouped"] == timing.runs["grouped"] + 1
    assert timing.ms["grouped"] == pytest.approx(100) and timing.runs["pattern"] <= autotune.MAX_RUNS
    # on a CPU a dense candidate's warm-up alone can drop it (no kernel compiles there)
    fake = FakeClock(cost)
    monkeypatch.setattr(autotune, "clock", lambda device: lambda: fake.now)
    timing = autotune.measure({name: fake.step(name) for name in cost}, torch.device("cpu"), frozenset({"pattern", "reference"}))
    assert fake.ran["expand"] == 1 and timing.best == "grouped" and timing.steady
    # runs under CHEAP_MS drop nothing early: 45 ms is over 2 x 20 ms but stays for the rounds
    fake = FakeClock({"grouped": [20, 20], "unfold": [45, 45], "reference": [60, 18]})
    monkeypatch.setattr(autotune, "clock", lambda device: lambda: fake.now)
    timing = autotune.measure({name: fake.step(name) for name in fake.cost}, torch.device("cpu"), frozenset({"reference"}))
    assert timing.best == "reference" and timing.runs["unfold"] >= 2 and timing.runs["reference"] >= autotune.MIN_RUNS
    # a leader whose runs disagree (a busy machine) is still the choice, but not a steady one
    fake = FakeClock({"grouped": [10, 10, 16, 16], "unfold": [11, 11]})
    monkeypatch.setattr(autotune, "clock", lambda device: lambda: fake.now)
    timing = autotune.measure({name: fake.step(name) for name in fake.cost}, torch.device("cpu"))
    assert timing.best == "grouped" and not timing.steady


def test_measure_stops_when_its_time_budget_is_spent(monkeypatch):
    """A tuning that has run past max(BUDGET_S, BUDGET_STEPS x the best first run) tries no further
    candidate and times no further round; its choice is the best so far, a provisional one."""
    fake = FakeClock({"grouped": [1200, 10], "unfold": [400, 12], "expand": [40, 40], "reference": [20, 9]})
    monkeypatch.setattr(autotune, "clock", lambda device: lambda: fake.now)
    # the budget is max(2 s, 30 x 10 ms) = 2 s: a slow warm-up (one-off kernel generation, 1.2 s) and
    # every other candidate fit in it (1.2 + 0.01 + 0.4 + 0.04 + 0.02 + 0.009 s, then short rounds)
    timing = autotune.measure({n: fake.step(n) for n in fake.cost}, torch.device("cpu"), frozenset({"reference"}))
    assert timing.steady and not timing.skipped  # all within the budget
    fake = FakeClock({"grouped": [2500, 10], "unfold": [30, 12], "expand": [40, 40], "reference": [20, 9]})
    monkeypatch.setattr(autotune, "clock", lambda device: lambda: fake.now)
    timing = autotune.measure({n: fake.step(n) for n in fake.cost}, torch.device("cpu"), frozenset({"reference"}))
    assert timing.best == "grouped" and timing.skipped == ["unfold", "expand", "reference"] and not timing.steady
    assert fake.ran["unfold"] == fake.ran["expand"] == fake.ran["reference"] == 0 and fake.ran["grouped"] == 2


def test_unsteady_timings_are_kept_as_provisional_until_a_quiet_start(monkeypatch):
    """Timings of a busy machine give a choice that is stored (the next process does not pay again)
    but re-measured by a process that starts while the machine is quiet."""
    set_autotune(True)
    calls = []
    unsteady = lambda steps, device, splits=frozenset(): calls.append(1) or Timing(  # noqa: E731
        {"grouped": 1.0, "expand": 2.0}, {"grouped": 4, "expand": 1}, "grouped", {}, steady=False)
    monkeypatch.setattr(autotune, "measure", unsteady)
    layer, x, c = _layer_and_batch()
    layer(x, c)
    (choice,) = auto_choices()
    assert choice.how == "tuned" and choice.backend == "grouped" and "provisional" in choice.note
    (name,) = os.listdir(autotune.cache_dir())
    assert json.loads(open(os.path.join(autotune.cache_dir(), name)).read())["steady"] is False
    monkeypatch.setattr(autotune, "quiet", lambda: False)
    clear_choices()
    layer(x, c)
    assert auto_choices()[0].how == "cached" and "busy machine" in auto_choices()[0].note and len(calls) == 1
    monkeypatch.setattr(autotune, "quiet", lambda: True)
    monkeypatch.setattr(autotune, "measure", fake_measure())  # steady this time
    clear_choices()
    layer(x, c)
    assert auto_choices()[0].how == "tuned"
    assert json.loads(open(os.path.join(autotune.cache_dir(), name)).read())["steady"] is True


def test_cache_is_reused_on_this_machine_only(monkeypatch, caplog):
    """A second process (here: the memory cleared) reuses the choice from disk without timing; another
    CPU model, thread count or torch version -- or a tampered entry -- is not trusted."""
    set_autotune(True)
    calls = []
    monkeypatch.setattr(autotune, "measure", fake_measure(calls))
    layer, x, c = _layer_and_batch()
    layer(x, c)
    (path,) = (autotune.cache_dir() + "/" + name for name in os.listdir(autotune.cache_dir()))
    entry = json.loads(open(path).read())
    assert entry["backend"] == "reference" and entry["machine"]["threads"] == torch.get_num_threads()
    assert entry["machine"]["name"] and "batch 8, 2 distinct rows" in entry["key"]
    clear_choices()
    with caplog.at_level(logging.INFO, logger="covfuse.layers"):
        layer(x, c)
    assert len(calls) == 1 and auto_choices()[0].how == "cached" and "reference (cached: measured" in caplog.text

    def tuned_again() -> bool:
        clear_choices()
        before = len(calls)
        layer(x, c)
        return len(calls) == before + 1 and auto_choices()[0].how == "tuned"

    monkeypatch.setattr(autotune, "cpu_name", lambda: "Another CPU")
    assert tuned_again()
    monkeypatch.undo()  # the original CPU name, and the cache folder and fake measure again
    monkeypatch.setenv("COVFUSE_CACHE_DIR", os.path.dirname(os.path.dirname(path)))
    monkeypatch.setattr(autotune, "measure", fake_measure(calls))
    set_autotune(True)
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # what the key reads; torch itself keeps its count
    assert tuned_again()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert tuned_again()
    monkeypatch.setattr(torch, "__version__", entry["machine"]["torch"])
    # the file's name is right but its content says another machine: ignored, then replaced
    with open(path, "w") as f:
        json.dump({**entry, "machine": {**entry["machine"], "name": "Another CPU"}}, f)
    assert tuned_again()
    with open(path, "w") as f:
        f.write("{not json")
    assert tuned_again()
    # refresh (covfuse bench layers --tune): measured again although the entry is valid
    clear_choices()
    layer(x, c)
    assert auto_choices()[0].how == "cached"
    set_autotune(True, refresh=True)
    assert tuned_again()


def test_unwritable_cache_warns_once_and_keeps_choices_in_memory(tmp_path, monkeypatch, caplog):
    set_autotune(True)
    monkeypatch.setattr(autotune, "measure", fake_measure())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("COVFUSE_CACHE_DIR", str(blocker))  # a folder cannot be made inside a file
    layer, x, c = _layer_and_batch()
    with caplog.at_level(logging.INFO, logger="covfuse.layers"):
        layer(x, c)
        with torch.no_grad():
            layer(x, c)
        layer(x, c)
    assert [ch.how for ch in auto_choices()] == ["tuned", "tuned"]
    assert caplog.text.count("cannot write the auto-tuning cache") == 1


def test_cache_written_by_two_processes_at_once(tmp_path, monkeypatch):
    """Two processes storing the same and different signatures at the same time leave only whole
    entries, each of which the other process trusts."""
    script = textwrap.dedent("""
        import sys, torch
        from covfuse.layers import autotune
        cpu = torch.device("cpu")
        which = sys.argv[1]
        torch.set_num_threads(int(sys.argv[2]))  # the thread count is part of the machine's key
        for i in range(50):
            for key in (f"shared {i}", f"{which} {i}"):
                choice = autotune.AutoChoice("grouped", "tuned", key, {"grouped": 1.0 + i, "expand": 2.0}, {"grouped": 3, "expand": 1})
                autotune.store_choice(cpu, key, ["expand", "grouped"], choice)
    """)
    env = {**os.environ, "COVFUSE_CACHE_DIR": str(tmp_path)}
    threads = str(torch.get_num_threads())
    procs = [subprocess.Popen([sys.executable, "-c", script, w, threads], env=env) for w in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = os.listdir(tmp_path / "autotune")
    assert len(files) == 150 and not [f for f in files if f.endswith(".tmp")]
    monkeypatch.setenv("COVFUSE_CACHE_DIR", str(tmp_path))
    for key in ("shared 7", "a 49", "b 0"):
        entry = autotune.load_choice(torch.device("cpu"), key, ["grouped", "expand"])
        assert entry is not None and entry["backend"] == "grouped", key


def test_rule_when_tuning_is_off(monkeypatch, caplog):
    set_autotune(False)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("tuned while off"))
    layer, x, c = _layer_and_batch()
    with caplog.at_level(logging.INFO, logger="covfuse.layers"):
        layer(x, c)
    (choice,) = auto_choices()
    assert choice.how == "rule" and choice.times_ms == {}
    assert choice.backend == rule_backend(x, 2, layer.weight, 1) == "pattern"
    assert "pattern (rule: tuning off)" in caplog.text
    assert not os.path.exists(autotune.cache_dir())


def test_default_is_on_everywhere_and_the_environment_switches_it(monkeypatch):
    monkeypatch.delenv("COVFUSE_AUTOTUNE", raising=False)
    assert autotune.autotune_enabled(torch.device("cpu")) and autotune.autotune_enabled(torch.device("cuda"))
    monkeypatch.setenv("COVFUSE_AUTOTUNE", "0")
    assert not autotune.autotune_enabled(torch.device("cpu"))
    set_autotune(True)
    assert autotune.autotune_enabled(torch.device("cpu"))


def test_each_run_log_names_every_choice(tmp_path):
    """The choice line reaches a run's log.txt through the `covfuse` logger, and a second run in the
    same process (a sweep) logs the remembered choice again."""
    from covfuse.training import runlog

    layer, x, c = _layer_and_batch()
    for run in ("one", "two"):
        with runlog.capture(tmp_path / run / "log.txt"):
            layer(x, c)
            layer(x, c)
        text = (tmp_path / run / "log.txt").read_text()
        assert text.count("covfuse.layers: auto back-end for HybridConv2d 3->4 k3x3 @6x6, batch 8, 2 distinct rows") == 1
        assert "pattern (rule: tuning off)" in text


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_compiled_layer_equals_eager_without_graph_breaks(kind, monkeypatch):
    """fullgraph=True fails on any graph break, e.g. the host syncs of grouping rows; with tuning on,
    tracing neither times nor remembers a choice (the traced fallback), eager use still tunes."""
    set_autotune(True)
    calls = []
    monkeypatch.setattr(autotune, "measure", fake_measure(calls))
    torch.manual_seed(9)
    layer = HybridConv2d(3, 4, 3, 2, padding=1, covariate_init="kaiming")
    x = torch.randn(6, 3, 8, 8)
    c = torch.randint(0, 2, (6, 2)).float() if kind == "binary" else torch.randn(6, 2)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(x, c)
    assert calls == [] and auto_choices() == []
    torch.testing.assert_close(got, layer(x, c), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, per_sample_reference(layer, x, c), rtol=1e-5, atol=1e-5)
    assert len(calls) == 1 and auto_choices()[0].how == "tuned"
    got.square().sum().backward()
    compiled_grad = layer.covariate_weight.grad.clone()
    layer.zero_grad()
    per_sample_reference(layer, x, c).square().sum().backward()
    torch.testing.assert_close(compiled_grad, layer.covariate_weight.grad, rtol=1e-4, atol=1e-5)

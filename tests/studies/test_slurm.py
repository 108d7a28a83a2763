"""Slurm for real: a single-node Slurm (munged, slurmctld, slurmd on loopback, a minimal slurm.conf in a
temporary folder) runs a study as a job array; a task requeued mid-training resumes; the results equal
a local sweep's. Needs Debian's slurm-wlm and munge and root (`.ci/run` installs them where it can);
skipped, with the reason, elsewhere."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from covfuse.cli.main import main as covfuse
from data_fixtures import make_twin

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a single-node Slurm needs Linux"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge (.ci/run does it as root)"
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _wait(condition, timeout: float, what: str, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "munge.sock"
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=covfuse-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=60
NodeName={host} NodeAddr=127.0.0.1 CPUs={max(2, os.cpu_count() or 2)} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run([_exe("munged"), f"--socket={sock}", f"--key-file={key}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                    f"--log-file={root / 'munge' / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}", "--force"],
                   check=True, env=env)
    pids = [root / "munge" / "munged.pid"]
    try:
        subprocess.run([_exe("slurmctld"), "-f", str(conf)], check=True, env=env)
        pids.append(root / "slurmctld.pid")
        _wait(lambda: (root / "slurmctld.pid").is_file(), 30, "slurmctld")
        subprocess.run([_exe("slurmd"), "-f", str(conf), "-N", host], check=True, env=env)
        pids.append(root / "slurmd.pid")
        _wait(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                                env=env).stdout, 60, "the node to be idle")
        yield env, root
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for pid_file in reversed(pids):  # only the daemons this fixture started, by their pid
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass


def _predictions(run: Path) -> list[tuple[str, str, float]]:
    with open(run / "predictions.csv", newline="") as f:
        return [(r["id"], r["split"], float(r["probability"])) for r in csv.DictReader(f)]


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread in the array tasks (sbatch exports this environment) and in the local sweep, whatever
    pytest-xdist set: float sums over another thread count differ in the last digits."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_study_as_a_job_array_with_a_requeued_task_equals_a_local_sweep(cluster, tmp_path_factory, monkeypatch,
                                                                          one_thread):
    env, root = cluster
    twin = make_twin(tmp_path_factory, n=200) / "celeba"
    base = tmp_path_factory.mktemp("cfg") / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": {"root": str(twin), "covariates": ["Young", "Male"], "image_size": 32, "batch_size": 16, "cache": "off"},
        "model": {"backbone": "vgg-mini"}, "bootstrap": 50,
        "trainer": {"max_epochs": 4, "summary": False, "progress": "none", "accelerator": "cpu", "devices": 1}}))
    work = tmp_path_factory.mktemp("work")
    study = ["--config", str(base), "--name", "arr", "--grid", "model.fusion=image-only,hybrid"]
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
    monkeypatch.chdir(work)
    assert covfuse(["sweep", *study, "--runs-dir", str(work / "slurm-runs"), "--launcher", "slurm", "--cpus", "1",
                    "--time", "00:20:00", "--submit"]) == 0
    script = (work / "slurm-runs" / "arr" / "slurm" / "sweep.sbatch").read_text()
    assert f"srun {Path(sys.executable).parent}" in script or f"srun {sys.executable}" in script  # absolute path
    job = _wait(lambda: subprocess.run(["squeue", "-h", "-o", "%F", "-n", "covfuse-arr"], capture_output=True,
                                       text=True, env=env).stdout.split(), 30, "the array to be queued")[0]
    hybrid = work / "slurm-runs" / "arr" / "fusion=hybrid" / "s0"
    # requeue task 1 once it has a checkpoint and before it has finished: Slurm sends SIGTERM, covfuse saves
    # a checkpoint and stops, and the task starts again and resumes
    _wait(lambda: (hybrid / "checkpoints" / "last.ckpt").is_file(), 300, "task 1's first checkpoint", every=0.1)
    assert not (hybrid / "metrics.json").exists(), "the run finished before it could be requeued; make it longer"
    subprocess.run(["scontrol", "requeue", f"{job}_1"], check=True, env=env)
    # Slurm holds a requeued job for 121 s before it may start again; let it start at once
    _wait(lambda: subprocess.run(["scontrol", "update", f"JobId={job}_1", "StartTime=now"], env=env,
                                 capture_output=True).returncode == 0, 30, "the requeued task to be pending")
    _wait(lambda: not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=env).stdout.strip(),
          600, "every task to finish", every=2)
    log = (hybrid / "log.txt").read_text()  # log.txt is appended to by both attempts
    assert log.count(f"run s0 in {hybrid}") == 2 and f"resuming from {hybrid / 'checkpoints' / 'last.ckpt'}" in log, log[-3000:]
    outs = {p.name: p.read_text() for p in (work / "slurm-runs" / "arr" / "slurm").glob("*.out")}
    assert len(outs) == 2 and all("study arr: " in text for text in outs.values()), outs
    # the same study, trained here without Slurm and without interruption
    assert covfuse(["sweep", *study, "--runs-dir", str(work / "local-runs")]) == 0
    for cell in ("fusion=image-only", "fusion=hybrid"):
        remote, local = work / "slurm-runs" / "arr" / cell / "s0", work / "local-runs" / "arr" / cell / "s0"
        a, b = _predictions(remote), _predictions(local)
        assert [r[:2] for r in a] == [r[:2] for r in b]
        assert [r[2] for r in a] == pytest.approx([r[2] for r in b], abs=1e-5), cell
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (remote, local))
        assert ma["test"]["accuracy"] == mb["test"]["accuracy"] and ma["global_step"] == mb["global_step"]
    assert covfuse(["status", str(work / "slurm-runs" / "arr"), "--format", "json"]) == 0

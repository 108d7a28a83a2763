"""README.md as a user follows it: its command block chains in order, and its Python snippets run as shown.

The commands run exactly as written, from a folder holding the repository's configs/, with
scale-only options appended (``SMALL``: fewer and smaller images, one epoch) so the chain takes
seconds; nothing in ``SMALL`` changes what a command does.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from covfuse.cli.main import main as covfuse

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SMALL = {
    "synth": ["--n", "60", "--image_size", "24x28"],
    "fit": ["--data.image_size", "16", "--data.batch_size", "8", "--data.eval_batch_size", "32",
            "--trainer.max_epochs", "1", "--bootstrap", "20", "--trainer.summary", "false", "--trainer.progress", "none"],
    "explain": ["--examples", "2", "--n-boot", "20", "--steps", "2", "--mass-images", "8"],
    "demo": ["--n", "300", "--epochs", "1", "--image-size", "24x28", "--bootstrap", "20", "--data", "demo-twin",
             "--config", "small-demo.yaml", "--methods", "image-only,hybrid"],
}


# Commands this chain does not run, each with the reason (keep this empty when possible).
NOT_RUN: dict[str, str] = {}


def readme_commands() -> list[list[str]]:
    """The indented `covfuse ...` lines of the "Command line" section, comments dropped."""
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("    covfuse ")]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in lines]


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_readme_commands_chain_in_order(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert [c[0] for c in commands] == ["data", "data", "data", "describe", "fit", "test", "predict", "explain", "demo"]
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    small = (REPO / "configs/demo.yaml").read_text().replace("image_size: 64", "image_size: 16")
    (tmp_path / "small-demo.yaml").write_text(small)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        key = argv[1] if argv[0] == "data" else argv[0]
        if key in NOT_RUN:
            continue
        capsys.readouterr()
        code = covfuse([*argv, *SMALL.get(key, [])])
        out, err = capsys.readouterr()
        assert code == 0, f"covfuse {shlex.join(argv)} failed: {err[-1500:]}"
        if key == "info":
            assert json.loads(out)["num_images"] == 60
        if key == "show":
            assert (tmp_path / "data/show.png").is_file() and "8 row(s) as the network sees them" in out
        if key == "predict":
            header, row = out.strip().splitlines()
            assert header == "image,Young,Male,P(Attractive)" and 0 <= float(row.split(",")[-1]) <= 1
    assert (tmp_path / "runs/my-run/metrics.json").is_file() and (tmp_path / "demo-out/results.json").is_file()
    assert (tmp_path / "runs/my-run/explain/explain.json").is_file()


def test_the_readme_python_snippets_run_as_shown():
    snippets = python_snippets()
    assert len(snippets) >= 2
    namespace: dict = {}
    for code in snippets:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["y"].shape == (8, 64, 64, 64)
    assert namespace["logits"].shape == (8, 1000)


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))])
def test_docs_link_only_to_files_in_the_repository(doc):
    path = REPO / doc if doc == "README.md" else REPO / "docs" / doc
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (path.parent / target).exists(), f"{doc} links to {target}, which is not in the repository"
    assert "shared/design" not in text and "ARCHITECTURE.md" not in text, f"{doc} points outside the repository"

"""Rebuild the table of docs/errors.md from the rows test_errors.py wrote (COVFUSE_WRITE_ERRORS_DOC=DIR).

    COVFUSE_WRITE_ERRORS_DOC=/tmp/rows pytest tests/cli/test_errors.py && python tests/errors_doc.py /tmp/rows
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
START, END = "<!-- catalogue -->", "<!-- /catalogue -->"


def command(argv: list[str]) -> str:
    from cli.test_errors import FIT

    if argv[: len(FIT)] == FIT:
        argv = ["fit", "--data.root", "twin/celeba", "…", *argv[len(FIT):]]
    return "covfuse " + " ".join(a if a == "…" else shlex.quote(a) for a in argv)


def main(rows_dir: str) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(Path(rows_dir).glob("*.json"))]
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    table = ["| case | situation | command | message |", "|---|---|---|---|"]
    table += [f"| `{r['id']}` | {esc(r['what'])} | `{esc(command(r['argv']))}` | {esc(r['message'])} |" for r in rows]
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{START}\n" + "\n".join(table) + f"\n{END}{tail}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1])

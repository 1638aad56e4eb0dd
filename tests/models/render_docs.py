"""Write the model matrix of docs/models.md from the tests' own results.

Runs `tests/models/test_matrix.py` under pytest (one thread, offline) with a JUnit XML report,
reads each case's recorded outcome ("ok" with its measured detail, or "refused" with the
refusal's first line; a failed case is "fails" with its error), and replaces the table between
the markers in docs/models.md. A column for Torch-Pruning used directly comes from
`bench/results/models_torch_pruning.json` where that file exists.

    .venv/bin/python tests/models/render_docs.py            # run the matrix, then write
    .venv/bin/python tests/models/render_docs.py --junit r.xml   # from an earlier run's report

`tests/models/test_matrix.py::test_docs_agree_with_the_expected_files` fails when the table
and the expected files disagree, so the page cannot drift from what the suite asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.models.archs import ARCHS  # noqa: E402
from tests.models.test_matrix import OPERATIONS, applies  # noqa: E402

DOC = ROOT / "docs" / "models.md"
TORCH_PRUNING = ROOT / "bench" / "results" / "models_torch_pruning.json"
START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"
CELL_CHARS = 90


def run_matrix(report: Path) -> None:
    """The matrix under pytest, one thread and offline, as `make test` runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "tests/models/test_matrix.py", "-q"]
    command += ["-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={report}"]
    subprocess.run(command, cwd=ROOT, env=env, check=False)


def read_results(report: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(arch, op) -> (outcome, detail) from the JUnit XML the matrix wrote."""
    results: dict[tuple[str, str], tuple[str, str]] = {}
    for case in ET.parse(report).iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("test_matrix["):
            continue
        arch, _, op = name.removeprefix("test_matrix[").removesuffix("]").rpartition("-")
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if props.get("outcome") is None:  # failed before recording: a crash, not a refusal
            message = failure.get("message", "") if failure is not None else "did not run"
            results[(arch, op)] = ("fails", message.splitlines()[0] if message else "")
        else:
            results[(arch, op)] = (props["outcome"], props.get("detail", ""))
    return results


def _cell(outcome: str, detail: str) -> str:
    text = detail.replace("|", "\\|").replace("\n", " ")
    if len(text) > CELL_CHARS:
        text = text[: CELL_CHARS - 3] + "..."
    return "ok" if outcome == "ok" else f"{outcome}: {text}"


def _torch_pruning() -> dict[str, str]:
    if not TORCH_PRUNING.exists():
        return {}
    models = json.loads(TORCH_PRUNING.read_text()).get("models", {})
    found = {}
    for arch, row in models.items():
        tp = row.get("torch_pruning", {})
        found[arch] = "ok" if tp.get("success") else f"fails: {tp.get('error') or ''}"
    return {k: _cell(*v.split(": ", 1)) if v != "ok" else "ok" for k, v in found.items()}


def table(results: dict[tuple[str, str], tuple[str, str]]) -> str:
    """The markdown table: one row per architecture, one column per operation, then counts."""
    tp = _torch_pruning()
    columns = ["arch", "library", *OPERATIONS] + (
        ["channels, Torch-Pruning directly"] if tp else []
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, arch in ARCHS.items():
        cells = [f"`{name}`", arch.library]
        for op in OPERATIONS:
            if not applies(arch, op):
                cells.append("n/a")
            elif (name, op) not in results:
                cells.append("not run")
            else:
                cells.append(_cell(*results[(name, op)]))
        if tp:
            cells.append(tp.get(name, "not run"))
        lines.append("| " + " | ".join(cells) + " |")
    counts = ["**ok**", ""]
    for op in OPERATIONS:
        cases = [n for n, a in ARCHS.items() if applies(a, op)]
        ok = sum(results.get((n, op), ("",))[0] == "ok" for n in cases)
        counts.append(f"**{ok} / {len(cases)}**")
    if tp:
        counts.append(f"**{sum(v == 'ok' for v in tp.values())} / {len(tp)}**")
    lines.append("| " + " | ".join(counts) + " |")
    return "\n".join(lines)


def not_done(results: dict[tuple[str, str], tuple[str, str]]) -> str:
    """Every case that did not succeed, with its whole first line."""
    lines = []
    for name, arch in ARCHS.items():
        for op in OPERATIONS:
            outcome, detail = results.get((name, op), ("ok", ""))
            if applies(arch, op) and outcome != "ok":
                lines.append(f"- `{name}` {op}, {outcome}: {detail}")
    if not lines:
        return "Every case of the matrix succeeds."
    return "Not done, each with netchisel's message:\n\n" + "\n".join(lines)


def write(results: dict[tuple[str, str], tuple[str, str]]) -> None:
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    body = f"{table(results)}\n\n{not_done(results)}"
    DOC.write_text(f"{head}{START}\n{body}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="a JUnit XML report of an earlier run")
    args = parser.parse_args()
    report = args.junit
    if report is None:
        report = Path(tempfile.mkdtemp()) / "matrix.xml"
        run_matrix(report)
    write(read_results(report))
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

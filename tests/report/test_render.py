from __future__ import annotations

import copy
import html
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from netchisel.core.errors import ArtifactError
from netchisel.report.render import (
    fit_layout,
    human,
    human_bytes,
    latency_setup,
    read_report,
    render_html,
    render_markdown,
    table_rows,
    write_reports,
)


def _report() -> dict[str, object]:
    def step(name: str, acc: float, flops: int, size: int) -> dict[str, object]:
        profile = {
            "params": 1000,
            "params_nonzero": 900,
            "flops": flops,
            "macs": flops // 2,
            "bytes_in_memory": 4000,
            "bytes_on_disk": size,
            "peak_memory_bytes": 9000,
            "energy_uj": 0.5,
            "latency_ms": 1.25,
            "batch_size": 8,
        }
        return {
            "name": name,
            "config": {},
            "seconds": 0.0,
            "metrics": {"accuracy": acc},
            "records": {},
            "profile": profile,
            "latency": {
                "p10_ms": 1.0,
                "p90_ms": 1.5,
                "backend": "eager",
                "threads": 2,
                "repeats": 30,
                "warmup": 5,
            },
            "per_module": {"params": {"": 1000, "fc": 1000}, "flops": {"": flops, "fc": flops}},
        }

    return {
        "recipe": {"name": "t"},
        "task": {"primary_metric": "accuracy"},
        "machine": {"cpu": "x"},
        "steps": [step("original", 98.0, 2_000_000, 5000), step("finetune", 98.5, 1_000_000, 3000)],
    }


def test_markdown_table_has_every_step_and_number() -> None:
    md = render_markdown(_report())
    assert "| original | accuracy 98 | 1,000 | 900 | 2M | 4.88 KiB | 1.250 (1.000-1.500) |" in md
    assert "| finetune | accuracy 98.5 |" in md
    assert "estimate" in md


def test_write_and_read(tmp_path: Path) -> None:
    paths = write_reports(_report(), tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert read_report(tmp_path)["steps"][1]["name"] == "finetune"
    assert (tmp_path / "report.html").read_text().count("<svg") == 4
    (tmp_path / "report.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ArtifactError, match="not a netchisel report"):
        read_report(tmp_path)


def test_human_units() -> None:
    assert (human(1234567), human(999), human_bytes(2048), human_bytes(None)) == (
        "1.23M",
        "999",
        "2 KiB",
        "-",
    )


def _with_sensitivity() -> dict[str, object]:
    report = _report()
    steps = report["steps"]
    assert isinstance(steps, list)
    steps[1]["records"] = {
        "sparsity": 0.5,
        "sensitivity": {
            "metric": "accuracy",
            "higher_is_better": True,
            "baseline": 98.0,
            "ratios": [0.0, 0.5, 0.9],
            "curves": {"fc1": [98.0, 97.5, 60.25], "fc2": [98.0, 98.0, 91.0]},
            "sizes": {"fc1": 1200, "fc2": 30},
            "importance": "l1",
            "split": "val",
            "chosen": {"fc1": 0.25, "fc2": 0.9},
        },
    }
    return report


def test_sensitivity_curves_are_a_table_in_markdown_and_a_plot_in_html(tmp_path: Path) -> None:
    md = render_markdown(_with_sensitivity())
    assert "## Sensitivity: finetune" in md
    assert "| layer | weights | 0 | 0.5 | 0.9 | chosen |" in md
    assert "| fc1 | 1,200 | 98 | 97.5 | 60.25 | 0.25 |" in md
    assert "| fc2 | 30 | 98 | 98 | 91 | 0.9 |" in md
    assert "- **finetune**: accuracy 98.5, sparsity 0.5" in md  # the curves are not in the list
    write_reports(_with_sensitivity(), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 5
    assert "sensitivity (finetune): x = chosen" in page and "fc2" in page


def _pruned_then_tested() -> dict[str, Any]:
    """`_report` with a pruning step (900 of 1,000 weights left) and `evaluate: {split: test}`."""
    report: dict[str, Any] = _report()
    original, finetune = report["steps"]
    pruned = copy.deepcopy(finetune)
    pruned["name"] = "prune.unstructured"
    pruned["profile"]["params_nonzero"] = 100
    tested = copy.deepcopy(pruned)
    tested.update(name="evaluate", config={"split": "test"}, seconds=0.2)
    tested["records"] = {"test_accuracy": 97.25, "test_loss": 0.1}
    report["steps"] = [original, pruned, tested]
    report["task"] = {"primary_metric": "accuracy", "eval_split": "val"}
    return report


def test_a_dynamic_stage_gets_a_trade_off_table_and_two_plots(tmp_path: Path) -> None:
    report: Any = _report()
    report["steps"][1]["records"]["dynamic"] = {
        "split": "val",
        "metric": "accuracy (%)",
        "static": {"value": 98.0, "mean_macs": 1000.0},
        "chosen": {"value": 97.6, "mean_macs": 420.0},
        "sweep": [
            {"setting": "max_drop 0", "value": 98.0, "mean_macs": 700.0},
            {"setting": "max_drop 0.5", "value": 97.6, "mean_macs": 420.0},
        ],
        "histogram": {"exit after layer1": 0.55, "end": 0.45},
    }
    md = render_markdown(report)
    assert "## Dynamic trade-off: finetune" in md
    assert "| max_drop 0.5 | 97.6 | 420 |" in md and "| exit after layer1 | 55.0% |" in md
    assert "dynamic {" not in md  # not repeated as a raw dict in the metrics line
    write_reports(report, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 6 and "accuracy vs mean MACs" in page and "paths taken" in page


def test_a_dynamic_model_s_flops_are_its_expected_flops_not_the_profiled_batch_s(
    tmp_path: Path,
) -> None:
    # An early-exit model profiled on one easy sample counts only the first exit's MACs: the
    # table showed those (77.6k of a 646k model) as if every sample cost that.
    report: Any = _report()
    profile = report["steps"][1]["profile"]
    profile["expected_macs"] = 3_000.0  # per sample, under the calibration split; batch 8
    rows = table_rows(report)
    assert [r["flops"] for r in rows] == [human(report["steps"][0]["profile"]["flops"]), "48k exp."]
    assert [r["latency_ms"] for r in rows] == ["1.250", "1.250 *"]
    md = render_markdown(report)
    assert "| 48k exp. |" in md and "exp.: a dynamic model's expected FLOPs" in md
    write_reports(report, tmp_path)
    assert "exp.: a dynamic model&#x27;s expected FLOPs" in (tmp_path / "report.html").read_text()
    profile["expected_macs"] = profile["macs"] / profile["batch_size"]  # a static model's
    assert "exp." not in render_markdown(report)


def test_the_evaluate_row_shows_the_split_it_evaluated() -> None:
    md = render_markdown(_pruned_then_tested())
    # the test split's accuracy, not the validation accuracy the runner measured beside it
    assert (
        "| evaluate | accuracy 97.25 (test split) | 1,000 | 100 | 1M | 2.93 KiB "
        "| 1.250 (1.000-1.500) | 8.79 KiB | 0.5 | 0.2 |"
    ) in md
    assert "| prune.unstructured | accuracy 98.5 | 1,000 | 100 |" in md
    rows = table_rows(_pruned_then_tested())
    assert [r["score"] for r in rows] == ["98", "98.5", "97.25 (test)"]
    assert [r["params_nz"] for r in rows] == ["1,000 (nz 900)", "1,000 (nz 100)", "1,000 (nz 100)"]


def test_the_latency_backend_and_threads_used_are_stated() -> None:
    line = (
        "Latency: eager backend, 2 threads, median and p10-p90 of 30 calls after 5 warm-up calls."
    )
    assert line in render_markdown(_report())
    assert html.escape(line) in render_html(_report())
    report = _report()
    report["steps"][1]["latency"] = {
        "p10_ms": 1.0,
        "p90_ms": 1.5,
        "backend": "compile",
        "threads": 1,
    }
    assert latency_setup(report) == (
        "Latency: eager backend, 2 threads, median and p10-p90 of 30 calls after 5 warm-up calls"
        " (original); compile backend, 1 thread (finetune)."
    )
    report["steps"] = [{"name": "old", "latency": {"p10_ms": 1.0, "p90_ms": 1.5}}]
    assert latency_setup(report) is None  # a report written before the fields existed


def test_fit_layout_leaves_out_columns_rather_than_cutting_numbers() -> None:
    rows = [{"a": "1,000 (nz 100)", "b": "1.250 (1.000-1.500)", "c": "1.250"}]
    titles = {"a": "params", "b": "ms (p10-p90)", "c": "ms"}
    layouts = [("a", "b"), ("a", "c")]
    assert fit_layout(layouts, titles, rows, 40) == ("a", "b")  # 1 + (14 + 3) + (19 + 3)
    assert fit_layout(layouts, titles, rows, 39) == ("a", "c")
    assert fit_layout(layouts, titles, rows, 10) == ("a", "c")  # nothing fits: the narrowest
    # the width it counts is the width rich draws: at 40 columns every cell is whole
    table = Table()
    for key in ("a", "b"):
        table.add_column(titles[key], no_wrap=True)
    table.add_row(rows[0]["a"], rows[0]["b"])
    console = Console(width=40, file=io.StringIO())
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "1,000 (nz 100)" in text and "1.250 (1.000-1.500)" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) == 40

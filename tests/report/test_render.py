from __future__ import annotations

import json
from pathlib import Path

import pytest

from netchisel.core.errors import ArtifactError
from netchisel.report.render import human, human_bytes, read_report, render_markdown, write_reports


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
            "latency": {"p10_ms": 1.0, "p90_ms": 1.5},
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

"""The docs renderer reads the matrix's JUnit report: outcomes, refusals and crashes."""

from __future__ import annotations

from pathlib import Path

from tests.models.render_docs import not_done, read_results, table

_REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.models.test_matrix" name="test_matrix[resnet18-profile]">
<properties><property name="outcome" value="ok"/><property name="detail" value="1 MACs"/>
</properties></testcase>
<testcase classname="tests.models.test_matrix" name="test_matrix[hf_t5-heads]">
<properties><property name="outcome" value="refused"/>
<property name="detail" value="prune.structured: a | b"/></properties></testcase>
<testcase classname="tests.models.test_matrix" name="test_matrix[tv_vit-channels]">
<failure message="IndexError: index 3 is out of bounds&#10;more">trace</failure></testcase>
<testcase classname="tests.models.test_matrix" name="test_docs_agree_with_the_expected_files"/>
</testsuite></testsuites>
"""


def test_results_and_table(tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(_REPORT)
    results = read_results(report)
    assert results == {
        ("resnet18", "profile"): ("ok", "1 MACs"),
        ("hf_t5", "heads"): ("refused", "prune.structured: a | b"),
        ("tv_vit", "channels"): ("fails", "IndexError: index 3 is out of bounds"),
    }
    rows = {r.split(" | ")[0]: r for r in table(results).splitlines()}
    assert rows["| `resnet18`"].split(" | ")[2:4] == ["ok", "not run"]
    assert "n/a" in rows["| `resnet18`"]  # no heads on a CNN
    assert "refused: prune.structured: a \\| b" in rows["| `hf_t5`"]
    assert "fails: IndexError" in rows["| `tv_vit`"]
    assert "- `tv_vit` channels, fails: IndexError" in not_done(results)

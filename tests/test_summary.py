"""Results files -> summary rows: which variant is best, retrieval rows, bad files."""

from __future__ import annotations

import csv
import io
import json

import pytest

from siglip_dola.summary import (
    COLUMNS,
    markdown_table,
    plot_changes,
    read_results_files,
    rows_of_results,
    summarise,
    summary_csv,
)


def _classification(dataset: str, baseline: float, variants: list[tuple[str, str, float]]):
    return {
        "dataset": dataset,
        "model": "m",
        "pretrained": "p",
        "task": "zeroshot_classification",
        "metrics": {"acc1": baseline, "acc5": 1.0},
        "language": "en",
        "dola": {
            "num_images": 100,
            "variants": [
                {"name": name, "kind": kind, "metrics": {"acc1": acc}}
                for name, kind, acc in variants
            ],
        },
    }


def test_the_best_dynamic_or_static_variant_is_reported():
    data = _classification(
        "set",
        0.50,
        [
            ("baseline", "baseline", 0.50),
            ("dyn", "dynamic", 0.52),
            ("stat", "static", 0.55),
            ("apc", "apc", 0.60),  # not DoLa: never the reported variant
            ("layer 20", "layer", 0.70),  # a reference: never the reported variant
        ],
    )
    (row,) = rows_of_results(data)
    assert (row.variant, row.dola, row.images) == ("stat", 0.55, 100)
    assert row.change == pytest.approx(0.05)
    assert row.csv_row()["change"] == "+0.050000"


def test_no_dola_variant_leaves_the_dola_columns_empty():
    (row,) = rows_of_results(_classification("set", 0.5, [("baseline", "baseline", 0.5)]))
    assert row.dola is None and row.change is None and row.csv_row()["dola"] == ""
    assert "| set | classification | 100 | acc1 | 50.00% |  |  |  |" in markdown_table([row])


def test_retrieval_rows_are_recall_at_1_both_ways():
    data = {
        "dataset": "flickr30k",
        "task": "zeroshot_retrieval",
        "metrics": {"text_retrieval_recall@1": 0.4, "image_retrieval_recall@1": 0.3},
        "dola": {"variant": "dynamic", "metrics": {"text_retrieval_recall@1": 0.45}},
    }
    rows = rows_of_results(data)
    assert [r.metric for r in rows] == ["text_retrieval_recall@1", "image_retrieval_recall@1"]
    assert rows[0].change == pytest.approx(0.05) and rows[1].dola is None


def test_folders_are_searched_and_other_json_passed_over(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.json").write_text(json.dumps(_classification("one", 0.5, [])))
    (tmp_path / "a" / "profile.json").write_text(json.dumps({"format": "profile"}))
    (tmp_path / "two.json").write_text(json.dumps(_classification("two", 0.6, [])))
    found = read_results_files([tmp_path])
    assert [path for path, _ in found] == [tmp_path / "a" / "one.json", tmp_path / "two.json"]
    rows = summarise([tmp_path])
    assert [r.dataset for r in rows] == ["one", "two"]
    parsed = list(csv.DictReader(io.StringIO(summary_csv(rows))))
    assert tuple(parsed[0]) == COLUMNS and parsed[1]["baseline"] == "0.600000"
    assert plot_changes(rows)[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_results_files([tmp_path / "missing.json"])
    with pytest.raises(ValueError, match="no results files found"):
        read_results_files([tmp_path])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not a JSON results file"):
        summarise([broken])
    broken.write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(ValueError, match="lacks dataset, task or metrics"):
        summarise([broken])
    no_acc = _classification("x", 0.5, [])
    del no_acc["metrics"]["acc1"]
    with pytest.raises(ValueError, match="without acc1"):
        rows_of_results(no_acc, "x.json")

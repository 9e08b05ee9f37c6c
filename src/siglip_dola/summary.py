"""Results files -> one row per data set: the baseline next to the best DoLa variant.

The best variant is chosen on the data set it is reported on: an upper bound of what DoLa
gives there, not a calibrated figure (``calibrate`` chooses on a validation set)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "SummaryRow",
    "markdown_table",
    "plot_changes",
    "read_results",
    "read_results_files",
    "rows_of_results",
    "summarise",
    "summary_csv",
]

DOLA_KINDS = ("dynamic", "static")
RETRIEVAL_METRICS = ("text_retrieval_recall@1", "image_retrieval_recall@1")
RESULT_KEYS = frozenset({"dataset", "task", "metrics"})
COLUMNS = (
    "dataset",
    "model",
    "pretrained",
    "task",
    "images",
    "metric",
    "baseline",
    "best_dola_variant",
    "dola",
    "change",
)


@dataclass(frozen=True)
class SummaryRow:
    """One metric of one data set: the baseline and the best DoLa variant (if any)."""

    dataset: str
    model: str
    pretrained: str
    task: str
    images: int | None
    metric: str
    baseline: float
    variant: str
    dola: float | None

    @property
    def change(self) -> float | None:
        return None if self.dola is None else self.dola - self.baseline

    def csv_row(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "pretrained": self.pretrained,
            "task": self.task,
            "images": "" if self.images is None else self.images,
            "metric": self.metric,
            "baseline": f"{self.baseline:.6f}",
            "best_dola_variant": self.variant,
            "dola": "" if self.dola is None else f"{self.dola:.6f}",
            "change": "" if self.change is None else f"{self.change:+.6f}",
        }


def read_results(path: Path) -> dict[str, Any]:
    """A results file's content; ``ValueError`` when it is no JSON results file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON results file ({exc})") from None
    if not isinstance(data, dict) or not RESULT_KEYS <= set(data):
        raise ValueError(f"{path} is not a results file: it lacks dataset, task or metrics")
    return data


def _results_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return read_results(path)
    except ValueError:
        return None


def read_results_files(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(path, content) of the files named, and of the results files anywhere below the
    folders named (other JSON files there, such as profiles or predictions, are passed
    over); each file is read once."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in map(Path, paths):
        if path.is_dir():
            for file in sorted(path.rglob("*.json")):
                data = _results_or_none(file)
                if data is not None:
                    found.append((file, data))
        elif path.is_file():
            found.append((path, read_results(path)))
        else:
            raise ValueError(f"{path} does not exist")
    if not found:
        raise ValueError("no results files found (JSON with dataset, task and metrics)")
    return found


def rows_of_results(data: dict[str, Any], path: Path | str = "results") -> list[SummaryRow]:
    """The summary rows of one results file's content: acc1 for classification (the best
    dynamic or static variant), recall@1 both ways for retrieval (the re-ranking variant)."""
    dola = data.get("dola") or {}
    common = {
        "dataset": str(data["dataset"]),
        "model": str(data.get("model", "")),
        "pretrained": str(data.get("pretrained", "")),
        "task": str(data["task"]),
        "images": dola.get("num_images"),
    }
    metrics = data["metrics"]
    if data["task"] == "zeroshot_retrieval":
        reranked = dola.get("metrics", {})
        return [
            SummaryRow(
                **common,
                metric=m,
                baseline=metrics[m],
                variant=dola.get("variant", ""),
                dola=reranked.get(m),
            )
            for m in RETRIEVAL_METRICS
            if m in metrics
        ]
    if "acc1" not in metrics:
        raise ValueError(f"{path}: classification results without acc1")
    candidates = [v for v in dola.get("variants", []) if v.get("kind") in DOLA_KINDS]
    best = max(candidates, key=lambda v: v["metrics"]["acc1"], default=None)
    return [
        SummaryRow(
            **common,
            metric="acc1",
            baseline=metrics["acc1"],
            variant="" if best is None else best["name"],
            dola=None if best is None else best["metrics"]["acc1"],
        )
    ]


def summarise(paths: Iterable[Path]) -> list[SummaryRow]:
    """Every row of every results file found from ``paths``, in file order."""
    return [row for f, data in read_results_files(paths) for row in rows_of_results(data, f)]


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    head = "| data set | task | images | metric | baseline | best DoLa variant | DoLa | change |"
    lines = [head, "|---|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        dola = "" if r.dola is None else f"{100 * r.dola:.2f}%"
        change = "" if r.change is None else f"{100 * r.change:+.2f}"
        task = r.task.removeprefix("zeroshot_")
        lines.append(
            f"| {r.dataset} | {task} | {'' if r.images is None else r.images} | {r.metric} | "
            f"{100 * r.baseline:.2f}% | {r.variant} | {dola} | {change} |"
        )
    models = sorted({f"{r.model} {r.pretrained}".strip() for r in rows})
    lines += [
        "",
        f"model(s): {', '.join(models)}. change: points, best DoLa variant (dynamic or static, "
        "chosen on the same data set: an upper bound) minus baseline.",
    ]
    return "\n".join(lines) + "\n"


def summary_csv(rows: Sequence[SummaryRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow(r.csv_row())
    return buffer.getvalue()


def plot_changes(rows: Sequence[SummaryRow]) -> bytes:
    """PNG: a bar per row, the change in points (green up, red down)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siglip_dola.report import figure_png

    shown = [r for r in rows if r.change is not None]
    labels = [r.dataset if r.metric == "acc1" else f"{r.dataset} ({r.metric})" for r in shown]
    changes = [100 * r.change for r in shown]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * max(1, len(shown))))
    ax.barh(range(len(shown)), changes, color=["#3a7" if c >= 0 else "#c44" for c in changes])
    ax.set_yticks(range(len(shown)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="gray", lw=1)
    ax.set(
        xlabel="change vs baseline (points)",
        title="Best DoLa variant vs baseline per data set (acc1; retrieval: recall@1)",
    )
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)

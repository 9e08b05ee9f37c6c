"""`siglip-dola summary`: one table of baseline vs the best DoLa variant per data set, from
results files (markdown and CSV), with a PNG of the change per data set.

The best variant is chosen on the data set it is reported on: an upper bound of what DoLa
gives there, not a calibrated figure (``calibrate`` chooses on a validation set)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siglip_dola.cli.options import UsageError

DOLA_KINDS = ("dynamic", "static")
RETRIEVAL_METRICS = ("text_retrieval_recall@1", "image_retrieval_recall@1")
FILES = ("summary.md", "summary.csv", "summary_change.png")
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="baseline vs best DoLa variant per data set, from results files (table + plot)",
    )
    p.add_argument("results", nargs="+", type=Path, help="results JSON files or folders of them")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("summary"),
        help=f"folder for {', '.join(FILES)} (default ./summary)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace earlier summary files")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Row:
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

    def values(self) -> dict[str, Any]:
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


def _files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
            files.extend(f for f in found if _is_results(f))
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path} does not exist")
    if not files:
        raise UsageError("no results files found (JSON with dataset, task and metrics)")
    return files


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not a JSON results file ({exc})") from None
    if not isinstance(data, dict) or not {"dataset", "task", "metrics"} <= set(data):
        raise UsageError(f"{path} is not a results file: it lacks dataset, task or metrics")
    return data


def _is_results(path: Path) -> bool:
    try:
        _read(path)
    except UsageError:
        return False
    return True


def rows_of(data: dict[str, Any], path: Path) -> list[Row]:
    """The summary rows of one results file."""
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
        theirs = dola.get("metrics", {})
        return [
            Row(
                **common,
                metric=m,
                baseline=metrics[m],
                variant=dola.get("variant", ""),
                dola=theirs.get(m),
            )  # fmt: skip
            for m in RETRIEVAL_METRICS
            if m in metrics
        ]
    if "acc1" not in metrics:
        raise UsageError(f"{path}: classification results without acc1")
    candidates = [v for v in dola.get("variants", []) if v.get("kind") in DOLA_KINDS]
    best = max(candidates, key=lambda v: v["metrics"]["acc1"], default=None)
    return [
        Row(
            **common,
            metric="acc1",
            baseline=metrics["acc1"],
            variant="" if best is None else best["name"],
            dola=None if best is None else best["metrics"]["acc1"],
        )
    ]


def markdown(rows: list[Row]) -> str:
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


def csv_text(rows: list[Row]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow(r.values())
    return buffer.getvalue()


def plot(rows: list[Row]) -> bytes:
    """A bar per row: the change in points (green up, red down)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from siglip_dola.io import atomic_write_bytes, atomic_write_text, check_writable

    targets = [args.out / name for name in FILES]
    for target in targets:
        check_writable(target, args.overwrite)
    rows = [row for path in _files(list(args.results)) for row in rows_of(_read(path), path)]
    table = markdown(rows)
    print(table, end="")
    atomic_write_text(targets[0], table)
    atomic_write_text(targets[1], csv_text(rows))
    atomic_write_bytes(targets[2], plot(rows))
    for target in targets:
        print(f"wrote: {target}")
    return 0

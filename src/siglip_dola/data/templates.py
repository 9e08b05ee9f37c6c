"""Prompt-template files: one template per line, each with the class placeholder ``{c}``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_template_file"]


def read_template_file(path: Path | str) -> tuple[str, ...]:
    """The templates of a file (blank lines and ``#`` comments skipped); an error names the
    file and the line of a template without ``{c}``."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    if not numbered:
        raise ValueError(f"template file {path} holds no template")
    for number, template in numbered:
        if "{c}" not in template:
            raise ValueError(
                f"{path}, line {number}: template lacks the class placeholder {{c}}: {template!r}"
            )
    return tuple(template for _, template in numbered)

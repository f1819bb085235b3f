"""Where and how the benchmarks write what they measured: JSON for programs and a markdown table for people,
both under ``benchmarks/results/`` and written atomically, and the same text printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radargate.files import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, title: str, environment: dict[str, Any], rows: list[dict[str, Any]],
                  table: list[str]) -> None:
    """``results/<name>.json`` (environment and rows) and ``results/<name>.md`` (title, environment, table)."""
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", {"environment": environment, "rows": rows})
    summary = f"# {title} ({name})\n\n{json.dumps(environment)}\n\n" + "\n".join(table) + "\n"
    atomic_write_text(RESULTS / f"{name}.md", summary)
    print(summary)

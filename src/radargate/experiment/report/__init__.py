"""Reports: markdown, CSV and figures, written from results (never from a model).

``comparison`` (one compare run's ``report.md``), ``study/`` (the scaling study's report, one module per
section), ``plots`` (the figures), ``intervals`` (paired and hierarchical bootstrap), ``format`` (how a number
reads). The routing summaries they show are computed below them, by the run (``experiment/routing.py``).
"""

from __future__ import annotations

from radargate.experiment.report.comparison import comparison_table, markdown_table, routing_section, write_report

__all__ = ["comparison_table", "markdown_table", "routing_section", "write_report"]

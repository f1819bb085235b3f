"""Reports: markdown, CSV and figures, written from results (never from a model).

``comparison`` (one compare run's ``report.md``), ``study`` (the scaling study's report), ``plots``
(the figures), ``analysis`` (routing statistics summarised for them), ``format`` (how a number reads).
"""

from __future__ import annotations

from radargate.experiment.report.comparison import comparison_table, markdown_table, routing_section, write_report

__all__ = ["comparison_table", "markdown_table", "routing_section", "write_report"]

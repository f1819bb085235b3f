"""The "Why" section: gradient norms, routing entropy, the busiest expert's share, RadarGate's angles and the
contrastive analysis per method and n, and how each moves with n."""

from __future__ import annotations

from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.study.rows import plus_minus


def diagnostics_section(summary: list[dict]) -> str:
    header = ["axis", "method", "n", "mean grad norm", "routing entropy (nats)", "busiest expert's share",
              "mean |angle| (rad)", "contrastive rho"]
    rows = [[e["axis"], e["method"], str(e["n"]), plus_minus(e, "mean_grad_norm", 1, ".3f"),
             plus_minus(e, "routing_entropy", 1, ".3f"), plus_minus(e, "busiest_expert_share", 1, ".2f"),
             plus_minus(e, "mean_abs_angle", 1, ".3f"), plus_minus(e, "contrast_rho", 1, ".2f")]
            for e in summary if e["method"] != "lora"]
    return "\n\n".join([
        "## Why: gradients, routing and angles",
        "Mean gradient norm over training steps (before clipping); the mean entropy of the gate's weights per "
        "token (uniform over n experts = ln n; top-k's is over its k chosen experts); the share of tokens whose "
        "highest weight goes to the layer's busiest expert (1/n: even use, 1: one expert takes all), averaged "
        "over layers; RadarGate's mean absolute rotation angle on the test inputs; and the contrastive analysis "
        "of the spec, the rank correlation between an expert's cosine with its partner before rotation and the "
        "change the rotation makes to it, averaged over layers (positive: the paper's finding that similar "
        "representations are pulled closer and distant ones pushed apart; near 0: no such pattern).",
        markdown_table(header, rows),
        *_diagnostic_trends(summary),
    ])


def _diagnostic_trends(summary: list[dict]) -> list[str]:
    """Each diagnostic from the smallest to the largest n measured, gate by gate: how training changes with n."""
    lines = []
    several_axes = len({e["axis"] for e in summary}) > 1
    for metric, label in (("mean_grad_norm", "mean gradient norm"), ("routing_entropy", "routing entropy"),
                          ("busiest_expert_share", "busiest expert's share"), ("mean_abs_angle", "mean |angle|"),
                          ("contrast_rho", "contrastive rho")):
        parts = []
        for axis, method in dict.fromkeys((e["axis"], e["method"]) for e in summary if e["method"] != "lora"):
            measured = sorted((e["n"], e[metric]) for e in summary
                              if (e["axis"], e["method"]) == (axis, method) and e[metric] is not None)
            if len(measured) > 1:
                name = f"{method} ({axis})" if several_axes else method
                parts.append(f"{name} " + " -> ".join(f"{value:.2f}" for _, value in measured)
                             + f" (n = {', '.join(str(n) for n, _ in measured)})")
        if parts:
            lines.append(f"- {label}: " + "; ".join(parts))
    return ["Across n, per gate:", "\n".join(lines)] if lines else []

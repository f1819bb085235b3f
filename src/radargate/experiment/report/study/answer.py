"""The report's first section, "The answer": RadarGate against the weighted-sum gates at n >= 8 in plain words,
each claim backed by its interval, with what the answer rests on and what could move it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from radargate.experiment.evaluate import mean
from radargate.experiment.report.format import signed_difference
from radargate.experiment.report.study.differences import CLAIMS, describe, difference, growth_lines
from radargate.experiment.report.study.gathered import Gathered
from radargate.experiment.report.study.headline import headline_counts
from radargate.experiment.report.study.rows import cell_row


def answer_section(found: Gathered) -> str:
    """RadarGate's default reading against the weighted-sum gates at n >= 8: every claim's intervals, their tally,
    where seeds disagree, and the checks and counts that qualify them."""
    axis = "fixed_r" if "fixed_r" in found.sweep else next(iter(found.sweep), None)
    if axis is None:
        return "## The answer\n\nNo sweep cells yet (the learning-rate search has not finished)."
    large = sorted(n for n in found.config.study.experts if n >= 8) or sorted(found.config.study.experts)[-1:]
    claims = _claims(found, axis, large)
    paragraphs = [
        f"RadarGate (the default reading, docs/radargate.md) against the weighted-sum gates at n >= 8 (axis "
        f"{axis}, each expert rank {found.config.adapter.r}):",
        "\n".join(claims.lines), _tally_text(claims), _seed_text(claims.split_by_seed), _completeness(found, axis),
        _learning_rate_check(found, axis), _rotation_line(found, axis), _growth_text(found, axis),
        headline_counts(found), _robustness_pointer(found),
    ]
    return "\n\n".join(["## The answer", *(paragraph for paragraph in paragraphs if paragraph)])


@dataclass
class _Claims:
    """Each claim's line, the verdicts counted overall and per gate, and the verdicts the seeds do not share."""

    lines: list[str] = field(default_factory=list)
    tally: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_reference: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"softmax": defaultdict(int), "topk": defaultdict(int)})
    split_by_seed: list[str] = field(default_factory=list)


def _claims(found: Gathered, axis: str, large: list[int]) -> _Claims:
    claims = _Claims()
    for label, split, metric in CLAIMS:
        parts = []
        for n in large:
            for reference in ("softmax", "topk"):
                result = difference(found.sides(axis, "radar", n), found.sides(axis, reference, n), split, metric)
                if result is None:
                    continue
                claims.tally[result.verdict] += 1
                claims.by_reference[reference][result.verdict] += 1
                parts.append(f"n={n} vs {reference} {describe(result)}")
                if result.verdict != "no detectable difference":
                    claims.split_by_seed += _seed_disagreement(found, axis, reference, n, (label, split, metric))
        claims.lines.append(f"- **{label}**: " + ("; ".join(parts) if parts else "not measured yet") + ".")
    return claims


def _tally_text(claims: _Claims) -> str:
    tally, total = claims.tally, sum(claims.tally.values())
    if not total:
        return ""
    return (f"Of these {total} comparisons RadarGate is better in {tally['better']}, worse in {tally['worse']}, and "
            f"not detectably different in {tally['no detectable difference']}. "
            f"{_plainly(tally, claims.by_reference)} By gate: "
            + "; ".join(f"against {reference} better in {counts['better']}, worse in {counts['worse']}"
                        for reference, counts in claims.by_reference.items() if counts) + ".")


def _seed_text(split_by_seed: list[str]) -> str:
    if not split_by_seed:
        return ""
    return ("The intervals resample examples, not training runs. These verdicts are not shared by the seeds: seed "
            "against seed, the difference changes sign, so the verdict rests on the seed as much as on the gate: "
            + "; ".join(split_by_seed) + ".")


def _growth_text(found: Gathered, axis: str) -> str:
    growth = growth_lines(found, axis, ("fit", "answer_nll"), ("test", "answer_nll"), ("unseen", "answer_nll"))
    if not growth:
        return ""
    return "\n".join(["Does its margin over each gate grow with n (margin at the largest n minus margin at the "
                      "smallest, answer NLL; negative = RadarGate pulls ahead)?", "", *growth])


def _robustness_pointer(found: Gathered) -> str:
    if found.config.study.robustness is None:
        return ""
    return ("This answer is about the default reading of RadarGate. Whether it holds for the other readings of the "
            "paper's abstract, and whether leaving the convex cone without rotating does as well, is the next "
            "section's question, answered by a protocol registered before its cells ran; its verdict comes first "
            "there.")


def _seed_disagreement(found: Gathered, axis: str, reference: str, n: int, claim: tuple[str, str, str]) -> list[str]:
    """``["unseen NLL n=8 vs topk (seed 0 -0.042, seed 1 +0.268)"]`` when RadarGate's mean difference from
    ``reference``, seed against same seed, has both signs; else nothing."""
    label, split, metric = claim
    radar, other = ({record["cell"]["seed"]: record for record in found.seeds_of(axis, method, n)}
                    for method in ("radar", reference))
    by_seed = {seed: difference([radar[seed]], [other[seed]], split, metric) for seed in radar.keys() & other.keys()}
    by_seed = {seed: result for seed, result in by_seed.items() if result is not None}
    if {d.mean > 0 for d in by_seed.values()} != {True, False}:
        return []
    seeds = ", ".join(f"seed {seed} {signed_difference(metric, d.mean)}" for seed, d in sorted(by_seed.items()))
    return [f"{label} n={n} vs {reference} ({seeds})"]


def _learning_rate_check(found: Gathered, axis: str) -> str:
    """Where top-k keeps every expert (k >= n) it is the softmax gate itself; if the two were trained at
    different rates, their difference there is what the learning rate alone does to the softmax gate."""
    k, rates = found.config.adapter.top_k, found.rates or {}
    if rates.get("topk") is None or rates.get("softmax") is None or rates["topk"] == rates["softmax"]:
        return ""
    for n in sorted({cell.n for cell in found.sweep.get(axis, {}) if cell.n <= k}):
        softmax = found.sides(axis, "softmax", n)
        same_gate = difference(found.sides(axis, "topk", n), softmax, "test", "answer_nll")
        radar = difference(found.sides(axis, "radar", n), softmax, "test", "answer_nll")
        if same_gate is not None and radar is not None:
            return (f"A check on the softmax gate's learning rate: at n={n} top-k keeps all {k} experts, so it is "
                    f"the softmax gate itself, trained at top-k's rate ({rates['topk']:g}) instead of the softmax "
                    f"gate's ({rates['softmax']:g}). The rate alone moves test answer NLL by {describe(same_gate)}, "
                    f"against {describe(radar)} for RadarGate minus the softmax gate at the same n. A margin of "
                    "that size over the softmax gate can come from its learning rate; top-k, at the same rate as "
                    "RadarGate, is the comparison that holds the rate fixed.")
    return ""


def _rotation_line(found: Gathered, axis: str) -> str:
    """How RadarGate's learned rotations behave, beside the paper's finding that they are contrastive."""
    parts = []
    for n in sorted({cell.n for cell in found.sweep.get(axis, {})}):
        rows = [cell_row(record) for record in found.seeds_of(axis, "radar", n)]
        rho = mean(row["contrast_rho"] for row in rows)
        if rho is not None:
            angle = mean(row["mean_abs_angle"] for row in rows)
            parts.append(f"n={n}: mean |angle| {angle:.2f} rad, rho {rho:+.2f}")
    if not parts:
        return ""
    return ("How RadarGate rotates (the paper finds its rotations contrastive: an expert already close to its "
            "partner is turned closer, a distant one away, which is rho > 0 for the rank correlation between the "
            "cosine before rotation and the change; see Why): " + "; ".join(parts) + ".")


def _plainly(tally: dict[str, int], by_reference: dict[str, dict[str, int]]) -> str:
    """The plain answer: RadarGate must beat *each* weighted-sum gate, so one gate it does not lead is a no."""
    better, worse = tally["better"], tally["worse"]
    if better and not worse and better == sum(tally.values()):
        return "Yes: RadarGate beats both weighted-sum gates on every claim measured."
    if not better and not worse:
        return "No: RadarGate shows no detectable advantage over the weighted-sum gates."
    not_led = [reference for reference, counts in by_reference.items()
               if counts and counts["better"] <= counts["worse"]]
    if not not_led:
        return "A mixed answer, leaning to RadarGate."
    return (f"No: against {' and '.join(not_led)} RadarGate is as often or more often worse than better "
            "where the gates differ.")


def _completeness(found: Gathered, axis: str) -> str:
    """How much of the sweep the answer rests on, so a partial study is read as one."""
    cells = found.sweep.get(axis, {})
    done = sum(record is not None for record in cells.values())
    seeds = sorted({cell.seed for cell, record in cells.items() if record is not None})
    missing = sorted({cell.n for cell, record in cells.items() if record is None})
    text = f"This rests on {done} of the {len(cells)} planned sweep cells (seeds run: {seeds or 'none'})."
    if missing:
        text += (f" Cells at n = {', '.join(map(str, missing))} are still to run, so the answer and its growth with "
                 "n rest on the finished cells alone; rerun the study command to add them.")
    if found.provisional:
        text += (" The learning rates are provisional (rates beyond the grid's edge are still to run; see "
                 "Learning rates).")
    return text

"""The study report's "Robustness" section, rebuilt from cell files alone: the pre-registered protocol
(``docs/robustness-protocol.md``) followed step by step, the plain verdict first.

Every comparison carries two 95% intervals: the study's (examples resampled, each side averaged over its seeds)
and a hierarchical one (tasks and seeds, then examples: ``report.intervals.hierarchical_difference``); the
verdict words follow the hierarchical one, which is the wider claim. Against the softmax gate, whose cells are
the study's own, the unseen comparison keeps the examples both scored (the study's six unseen tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from radargate.experiment import robustness
from radargate.experiment.cells import Cell, CellStore, cells_directory, evaluation
from radargate.experiment.config import READINGS, ExperimentConfig
from radargate.experiment.evaluate import mean
from radargate.experiment.plan import best_reading, learning_rates
from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.format import VERDICT_SHORT, number, signed_difference
from radargate.experiment.report.intervals import Difference, hierarchical_difference, paired_difference
from radargate.experiment.report.study.gathered import Gathered
from radargate.experiment.report.study.headline import replay_counts, task_records
from radargate.experiment.report.study.learning_rates import rate_table
from radargate.experiment.report.study.rows import cell_row

PROTOCOL = "docs/robustness-protocol.md"
REGISTERED = "aa78309"
"""The commit that registered the protocol, before any of its cells ran."""
GROUPS = (  # (verdict group, [(label, split, metric, subset)])
    ("fitting", [("fit NLL", "fit", "answer_nll", None)]),
    ("held-out examples", [("test NLL", "test", "answer_nll", None), ("test acc", "test", "acc", None)]),
    ("unseen tasks", [("unseen NLL", "unseen", "answer_nll", None), ("unseen acc", "unseen", "acc", None)]),
)
SUBSET_CLAIMS = [("unseen NLL, study six", "unseen", "answer_nll", "six"),
                 ("unseen acc, study six", "unseen", "acc", "six")]


@dataclass(frozen=True)
class Comparison:
    """One method minus one reference on one claim: the examples' interval and the hierarchical one."""

    flat: Difference
    hierarchical: Difference

    @property
    def verdict(self) -> str:
        return self.hierarchical.verdict

    def text(self) -> str:
        """``-0.012 [-0.020, -0.004] / [-0.051, +0.030] no diff.``: examples' interval / hierarchical one."""
        def show(value: float) -> str:
            return signed_difference(self.flat.metric, value)

        flat, tasks = self.flat, self.hierarchical
        return (f"{show(flat.mean)} [{show(flat.low)}, {show(flat.high)}] / [{show(tasks.low)}, {show(tasks.high)}] "
                f"{VERDICT_SHORT[self.verdict]}")


@dataclass
class Found:
    """The protocol's state as read from the cell files."""

    config: ExperimentConfig
    rates: dict[str, float | None] | None
    scores: dict[str, float | None]
    best: str | None
    search: dict[Cell, dict | None]
    decisive: dict[Cell, dict | None] = field(default_factory=dict)
    softmax: dict[int, list[dict]] = field(default_factory=dict)
    replay: bool | None = None
    replay_cells: dict[Cell, dict | None] = field(default_factory=dict)
    """The best reading's replay cells (once step 4 calls for them)."""
    study_replay: dict[Cell, dict | None] = field(default_factory=dict)
    """The study's own replay cells: the gates the best reading's replay is compared with."""

    def records(self, method: str, n: int) -> list[dict]:
        """Finished cells of ``method`` at ``n``: decisive cells where it has them, else its search cell at the
        rate the search chose (none before it has chosen one: cells at other rates are not seeds)."""
        decisive = [r for c, r in self.decisive.items() if c.method == method and c.n == n and r and not r["failed"]]
        if decisive:
            return decisive
        rate = (self.rates or {}).get(method)
        return [r for c, r in self.search.items()
                if c.method == method and c.n == n and c.lr == rate and r and not r["failed"]]


def gather(config: ExperimentConfig, study_store: CellStore, softmax: dict[int, list[dict]],
           study_replay: dict[Cell, dict | None]) -> Found:
    """Read every cell the protocol has planned so far (``softmax``: the study's softmax cells by n;
    ``study_replay``: the study's replay cells)."""
    derived = robustness.robustness_config(config)
    store = CellStore(cells_directory(derived))
    rates = robustness.rates(config, study_store, store)
    provisional = rates or {**(learning_rates(config, study_store) or {}),
                            **(learning_rates(derived, store, provisional=True) or {})}
    scores = robustness.reading_scores(config, study_store, store, provisional) if provisional else {}
    best = best_reading(scores) if rates is not None else None
    search = {cell: store.load(cell, derived) for cell in robustness.search_cells(config, store)}
    found = Found(config, rates, scores, best, search, softmax=softmax, study_replay=study_replay)
    if best is not None:
        found.decisive = {cell: store.load(cell, derived) for cell in robustness.decisive_cells(config, best, rates)}
        found.replay = robustness.replay_called_for(config, best, found.decisive)
    if found.replay:
        found.replay_cells = {cell: store.load(cell, derived) for cell in robustness.replay_cells(config, best, rates)}
    return found


def compare(a: Sequence[dict], b: Sequence[dict], split: str, metric: str, subset: list[str] | None = None
            ) -> Comparison | None:
    """``a`` minus ``b`` on the examples both scored (of ``subset``'s tasks, if given); ``None`` if either lacks
    the split."""
    sides = [[evaluation(record, split) for record in records] for records in (a, b)]
    if any(not side or any(e is None for e in side) for side in sides):
        return None
    keys = set.intersection(*({(x["task"], x["id"]) for x in e["examples"]} for side in sides for e in side))
    if subset is not None:
        keys = {key for key in keys if key[0] in subset}
    if not keys:
        return None
    sides = [[{**e, "examples": [x for x in e["examples"] if (x["task"], x["id"]) in keys]} for e in side]
             for side in sides]
    return Comparison(paired_difference(*sides, metric), hierarchical_difference(*sides, metric))


def robustness_section(study: Gathered, study_store: CellStore) -> str:
    """The section, once the study's own learning rates are final; ``""`` for a study without ``study.robustness``."""
    config = study.config
    if config.study.robustness is None or study.rates is None or study.provisional:
        return ""
    softmax = {n: study.seeds_of("fixed_r", "softmax", n) for n in config.study.robustness.experts
               if "fixed_r" in study.sweep}
    found = gather(config, study_store, softmax, study.headline)
    table = _comparisons(found)
    parts = ["## Robustness: other readings of RadarGate, and the premise alone", _protocol_text(found),
             _verdict_text(found, table), _search_text(found), _choice_text(found), _table_text(found, table),
             _contrast_text(found), _replay_text(found, table), _completeness_text(found)]
    return "\n\n".join(part for part in parts if part)


def _methods(found: Found) -> list[str]:
    settings = robustness.settings(found.config)
    return list(dict.fromkeys(["radar", *(m for m in settings.searched if m in READINGS), *settings.searched,
                               *(m for m in settings.compared if m != "topk")]))


def _comparisons(found: Found) -> dict[tuple[str, str, int, str], Comparison]:
    """(method, reference, n, claim label) -> comparison, for every pair with finished cells."""
    subset = robustness.settings(found.config).unseen_subset
    claims = [claim for _, group in GROUPS for claim in group] + SUBSET_CLAIMS
    table = {}
    for n in robustness.settings(found.config).experts:
        references = {"topk": found.records("topk", n), "softmax": found.softmax.get(n, [])}
        for method in _methods(found):
            mine = found.records(method, n)
            for reference, theirs in references.items():
                if not mine or not theirs:
                    continue
                for label, split, metric, which in claims:
                    if reference == "softmax" and split == "unseen" and not which:
                        continue  # softmax scored the study six only: its unseen claims are the subset's
                    result = compare(mine, theirs, split, metric, subset if which else None)
                    if result is not None:
                        table[(method, reference, n, label)] = result
        signed = found.records("signed", n)
        for method in ("radar", found.best):
            if method and method != "signed" and signed and found.records(method, n):
                for label, split, metric, _ in (claim for _, group in GROUPS for claim in group):
                    result = compare(signed, found.records(method, n), split, metric)
                    if result is not None:
                        table[("signed", method, n, label)] = result
    return table


def _protocol_text(found: Found) -> str:
    settings = robustness.settings(found.config)
    return (f"The protocol ([{PROTOCOL}]({'../' + PROTOCOL})) was registered in commit `{REGISTERED}`, before any of "
            "these cells ran, and this section follows it. In short: (1) each other reading of RadarGate (radar-sparse:"
            " the top-k gate's weights as magnitudes; radar-fusion: an input-dependent fusion; radar-softplus: "
            "unnormalised magnitudes) and the signed gate (real, unnormalised per-token coefficients, no rotation: "
            f"the premise alone) get the study's learning-rate search at n={found.config.study.lr_experts}; (2) the "
            "reading with the lowest validation answer NLL (the default reading included, scored by the study's own "
            "search) is the best reading, chosen on nothing else; (3) top-k, the default reading, the best reading "
            f"and signed train at n in {settings.experts} with the first {settings.seed_counts} of seeds "
            f"{settings.seeds}, scored zero-shot on {len(settings.unseen_tasks)} unseen tasks chosen by a written rule "
            f"(up to {settings.max_unseen_per_task} examples each; the study's six as the subset \"study six\"); (4) "
            f"the paper's {len(found.config.study.headline_tasks)}-task replay for the best reading only if it beats "
            "top-k on test answer NLL at the "
            "smallest n. Each entry below is the difference (method minus reference; accuracy in points, answer NLL "
            "in nats, lower better) with two 95% intervals: examples resampled / tasks and each side's seeds (a seed "
            "drawn once for all tasks: the protocol's amendment 1), then examples resampled. The verdict word "
            "follows the second.")


def _beats(table: dict, method: str, reference: str, n: int, claims: list[tuple]) -> bool | None:
    """A method beats the reference on a group of claims at n: NLL better, accuracy not worse (``None``: unmeasured)."""
    results = [table.get((method, reference, n, label)) for label, *_ in claims]
    if any(result is None for result in results):
        return None
    return all(r.verdict == "better" if r.flat.metric == "answer_nll" else r.verdict != "worse" for r in results)


def _verdict_text(found: Found, table: dict) -> str:
    experts = robustness.settings(found.config).experts
    readings = [m for m in _methods(found) if m == "radar" or m in READINGS]
    lines = ["### The verdict"]
    if not table:
        return "\n\n".join([*lines, "No comparison has finished yet."])
    bullets = []
    for group, claims in GROUPS:
        winners = [_winner_text(found, table, method, n, claims) for method in readings for n in experts
                   if _beats(table, method, "topk", n, claims)]
        measured = [(m, n) for m in readings for n in experts if _beats(table, m, "topk", n, claims) is not None]
        text = (f"reading {', '.join(winners)} beats the top-k gate" if winners
                else "no reading of RadarGate beats the top-k gate")
        bullets.append(f"- **{group.capitalize()}**: {text} (measured: "
                       + (", ".join(f"{m} n={n}" for m, n in measured) or "nothing yet") + ").")
    bullets.append("- **Leaving the cone**: " + _cone_text(found, table, experts))
    return "\n\n".join([*lines, "\n".join(bullets), _partial_note(found)])


def _winner_text(found: Found, table: dict, method: str, n: int, claims: list[tuple]) -> str:
    """``radar-sparse at n=8 (test NLL -0.021 [...] / [...] better; ...; 3 seeds)``: by how much, on how many runs."""
    margins = "; ".join(f"{label} {table[(method, 'topk', n, label)].text()}" for label, *_ in claims)
    seeds = len(found.records(method, n))
    return f"{method} at n={n} ({margins}; {seeds} seed{'s' if seeds > 1 else ''})"


def _cone_text(found: Found, table: dict, experts: list[int]) -> str:
    """Whether signed (out of the cone, no rotation) beats the weighted-sum gates, and how it stands against the
    rotating readings."""
    parts = []
    for n in experts:
        against = [f"{ref}: test NLL {VERDICT_SHORT[r.verdict]}, {unseen} {VERDICT_SHORT[u.verdict]}"
                   for ref, unseen in (("topk", "unseen NLL"), ("softmax", "unseen NLL, study six"))
                   if (r := table.get(("signed", ref, n, "test NLL"))) and (u := table.get(("signed", ref, n, unseen)))]
        rotating = [f"{m}: test NLL {VERDICT_SHORT[r.verdict]}" for m in ("radar", found.best)
                    if m and (r := table.get(("signed", m, n, "test NLL")))]
        if against or rotating:
            parts.append(f"n={n}, signed against " + "; ".join(dict.fromkeys(against + rotating)))
    if not parts:
        return "not measured yet."
    return ("; ".join(parts).removesuffix(".") + ". (signed minus the other; \"better\" against a rotating reading "
            "means leaving the cone without rotating does better than rotating.)")


def _partial_note(found: Found) -> str:
    planned = len(found.decisive) or None
    done = sum(record is not None for record in found.decisive.values())
    if planned and done == planned:
        return ""
    return ("**Under way:** " + (f"{done} of {planned} decisive cells have finished" if planned else
                                 "the learning-rate search has not finished, so no best reading is chosen yet")
            + "; every verdict above rests on the finished cells alone and may change when the rest have run.")


def _search_text(found: Found) -> str:
    def chosen_text(method: str) -> str:
        chosen = (found.rates or {}).get(method)
        return number(chosen, "g") if chosen else _unchosen(found)

    header, rows = rate_table(found.search, chosen_text)
    return "### Step 1: learning rates\n\n" + markdown_table(header, rows)


def _unchosen(found: Found) -> str:
    return "every rate diverged: out of the running" if found.rates is not None else "pending"


def _choice_text(found: Found) -> str:
    scores = ", ".join(f"{method} {number(score, '.4f')}" for method, score in found.scores.items())
    out = [m for m in robustness.settings(found.config).searched if m in READINGS and m not in found.scores]
    chosen = (f"The best reading is **{found.best}**." if found.best else
              "No reading is chosen until every reading's search has finished.")
    if out and found.rates is not None:
        chosen += f" Out of the running (every rate diverged): {', '.join(out)}."
    return (f"### Step 2: the best reading\n\nValidation answer NLL at each reading's chosen rate (n="
            f"{found.config.study.lr_experts}, seed {found.config.study.seeds[0]}): {scores or 'none yet'}. {chosen}")


def _table_text(found: Found, table: dict) -> str:
    labels = [label for _, group in GROUPS for label, *_ in group] + [label for label, *_ in SUBSET_CLAIMS]
    rows = []
    for method, reference, n in dict.fromkeys(key[:3] for key in table):
        seeds = len(found.records(method, n))
        rows.append([f"{method} - {reference}", str(n), str(seeds),
                     *(table[(method, reference, n, label)].text() if (method, reference, n, label) in table else "-"
                       for label in labels)])
    header = ["comparison", "n", "seeds", *labels]
    return ("### Step 3: every reading and signed against top-k and softmax\n\nThe readings not chosen in step 2 "
            "have their search cell only (one seed). Softmax's cells are the study's: it scored the study six alone, "
            "so against it the unseen claims are those of the study six.\n\n"
            + (markdown_table(header, rows) if rows else "No finished pairs yet."))


def _contrast_text(found: Found) -> str:
    parts = []
    for method in [m for m in _methods(found) if m == "radar" or m in READINGS]:
        for n in robustness.settings(found.config).experts:
            rho = mean(cell_row(record)["contrast_rho"] for record in found.records(method, n))
            if rho is not None:
                parts.append(f"{method} n={n}: rho {rho:+.2f}")
    if not parts:
        return ""
    return ("### Contrastive analysis\n\nRank correlation between an expert's cosine with its partner before "
            "rotation and the change the rotation makes (the paper's finding predicts rho > 0), averaged over "
            "layers and seeds: " + "; ".join(parts) + ".")


def _replay_text(found: Found, table: dict) -> str:
    title = "### Step 4: the replay"
    if found.best is None:
        return f"{title}\n\nDecided once the best reading is chosen and its cells at the smallest n ran."
    if found.best == robustness.DEFAULT_READING:
        return f"{title}\n\nThe best reading is the default one, whose replay is the study's own (section above)."
    if found.replay is None:
        return f"{title}\n\nDecided once the best reading's and top-k's cells at the smallest n have all run."
    n = min(robustness.settings(found.config).experts)
    test = table.get((found.best, "topk", n, "test NLL"))
    measured = (f" (test answer NLL, {found.best} minus top-k at n={n}: {test.text()}; the condition reads the first, "
                "examples', interval, seeds pooled, as step 4 registered it; the verdict words above follow the "
                "second)") if test else ""
    if not found.replay:
        return (f"{title}\n\nNot run: {found.best} does not beat top-k on test answer NLL at the smallest n{measured}, "
                "the protocol's condition for it.")
    return "\n\n".join([title, f"{found.best} beats top-k on test answer NLL at the smallest n{measured}, so the "
                          f"{len(found.config.study.headline_tasks)}-task replay ran for it, against the study's own "
                          "softmax and top-k task cells.",
                          _replay_counts(found) or "No task of the replay has finished yet."])


def _replay_counts(found: Found) -> str | None:
    study = found.config.study
    others = [m for m in study.headline_methods if m in ("softmax", "topk")]
    by_task = [{**{m: r for m, r in task_records(found.study_replay, task).items() if m in others},
                **task_records(found.replay_cells, task)} for task in study.headline_tasks]
    return replay_counts(by_task, found.best, others, experts=study.headline_experts)


def _completeness_text(found: Found) -> str:
    cells = {**found.search, **found.decisive, **found.replay_cells}
    done = sum(record is not None for record in cells.values())
    failed = [cell.name for cell, record in cells.items() if record and record["failed"]]
    text = f"{done} of the {len(cells)} cells planned so far have finished"
    return (f"_{text} (cell files in `{cells_directory(robustness.robustness_config(found.config))}`)"
            + (f"; diverged: {', '.join(failed)}" if failed else "") + "._")

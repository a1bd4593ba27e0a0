"""How sure a teacher selection is (docs/selection.md#how-sure-is-the-pick): rank agreement of the checkpoint
orderings over a sweep of the kde noise sigma, and the one-line verdict.

Pure functions of the rows :func:`hf_ckd.selection.score_trajectory` returns (dicts with ``name``, ``step``,
``score``, ``saturation_x``, ``saturation_y`` and, after a sigma sweep, ``sweep_scores``), so they work on a
``selection.json``'s ``checkpoints`` too. No torch.

Verdicts, from the score margin and the sweep:

- **cannot rank**: fewer than two candidates; the scores differ by less than :data:`FLAT_SPREAD` (relative to
  the best); every measured term sits at its ceiling for every checkpoint; or, swept, the pick changes with
  sigma *and* two sigmas order the checkpoints with Kendall's tau below :data:`MIN_AGREEMENT`.
- **clear pick**: the selected checkpoints lead the next one by at least :data:`CLEAR_MARGIN` of the best
  score, no term is saturated and, swept, every sigma picks the same checkpoints.
- **weak preference**: everything else (a small margin, a pick that moves with sigma while the orderings
  broadly agree, or a saturated term next to one that still ranks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CLEAR_MARGIN",
    "FLAT_SPREAD",
    "MIN_AGREEMENT",
    "SATURATION_WARNING",
    "VERDICTS",
    "kendall_tau",
    "ranked_names",
    "sweep_stability",
    "verdict",
]

CLEAR_MARGIN = 0.05
"""A clear pick leads the runner-up by at least this fraction of the best score."""
FLAT_SPREAD = 0.02
"""Scores whose range is below this fraction of the best score cannot rank the checkpoints."""
MIN_AGREEMENT = 0.5
"""Below this Kendall's tau two sigmas order the checkpoints differently (used with a pick that moves)."""
SATURATION_WARNING = 0.98
"""A term at or above this fraction of its ceiling for every checkpoint does not rank them."""
VERDICTS = ("clear pick", "weak preference", "cannot rank")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long score lists (ties counted as in
    ``scipy.stats.kendalltau``): +1 same order, -1 reversed, NaN when one list is constant. O(n²)."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs lists of one length, got {len(a)} and {len(b)}.")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def ranked_names(rows: Sequence[dict[str, Any]], key: str = "score", index: int | None = None) -> list[str]:
    """Checkpoint names from best to worst by ``row[key]`` (``row[key][index]`` for a list such as
    ``sweep_scores``); ties go to the earlier step, as in :func:`hf_ckd.selection.select`."""

    def value(row: dict[str, Any]) -> float:
        v = row[key] if index is None else row[key][index]
        return v if v is not None and math.isfinite(v) else -math.inf

    return [r["name"] for r in sorted(rows, key=lambda r: (-value(r), r["step"]))]


def sweep_stability(rows: Sequence[dict[str, Any]], k: int = 1) -> dict[str, Any] | None:
    """What a sigma sweep says about the ranking, or ``None`` when the rows were not swept.

    Returns a dict with ``grid`` (the relative sigmas), ``picks`` (the top-``k`` names at each sigma),
    ``pick_stable`` (every sigma, and the main score, pick the same names), ``kendall_tau`` (the ``[S, S]``
    matrix of tau between the checkpoint orderings at each pair of sigmas), ``min_kendall_tau`` and
    ``mean_kendall_tau`` (over the pairs; NaN-free pairs only) and ``spread`` (per checkpoint, the range
    max - min of its normalised score over the sigmas).
    """
    if not rows or "sweep_scores" not in rows[0]:
        return None
    grid = [entry["noise_std_relative"] for entry in rows[0]["sigma_sweep"]]
    columns = [[row["sweep_scores"][s] for row in rows] for s in range(len(grid))]
    picks = [ranked_names(rows, "sweep_scores", s)[:k] for s in range(len(grid))]
    main = ranked_names(rows)[:k]
    matrix = [[kendall_tau(columns[i], columns[j]) for j in range(len(grid))] for i in range(len(grid))]
    pairs = [matrix[i][j] for i in range(len(grid)) for j in range(i + 1, len(grid))]
    pairs = [t for t in pairs if math.isfinite(t)]
    return {
        "grid": grid,
        "picks": picks,
        "main_pick": main,
        "pick_stable": all(sorted(p) == sorted(main) for p in picks),
        "kendall_tau": matrix,
        "min_kendall_tau": min(pairs) if pairs else math.nan,
        "mean_kendall_tau": sum(pairs) / len(pairs) if pairs else math.nan,
        "spread": {row["name"]: max(row["sweep_scores"]) - min(row["sweep_scores"]) for row in rows},
    }


def _saturated(rows: Sequence[dict[str, Any]], term: str) -> bool | None:
    """Whether ``term`` (saturation_x / saturation_y) is at its ceiling for every row; None if not measured."""
    values = [r.get(term) for r in rows]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:  # not measured (NaN: e.g. I(X;F) of probe)
        return None
    return min(values) >= SATURATION_WARNING


def verdict(
    rows: Sequence[dict[str, Any]], selected: Sequence[str], stability: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The verdict on a selection (see the module docstring for the rules).

    Args:
        rows: scored checkpoints (``score``, ``step``, ``name``, saturations).
        selected: the picked names (k of them).
        stability: :func:`sweep_stability` of the rows, if swept.

    Returns:
        ``{"verdict": one of VERDICTS, "reason": one sentence, "margin": (s_k - s_(k+1)) / s_1,
        "spread": (s_1 - s_N) / s_1}`` (fractions of the best score; NaN when undefined).
    """
    scores = sorted((r["score"] for r in rows), reverse=True)
    k = len(selected)
    best = scores[0] if scores else math.nan
    margin = (scores[k - 1] - scores[k]) / best if len(scores) > k and best > 0 else math.nan
    spread = (scores[0] - scores[-1]) / best if scores and best > 0 else math.nan
    saturated = {term: _saturated(rows, term) for term in ("saturation_x", "saturation_y")}
    measured = [s for s in saturated.values() if s is not None]
    names = ", ".join(selected)

    def result(label: str, reason: str) -> dict[str, Any]:
        return {"verdict": label, "reason": reason, "margin": margin, "spread": spread}

    if len(rows) < 2 or len(rows) <= k:
        return result("cannot rank", f"{len(rows)} candidate(s) for {k} pick(s): nothing to rank.")
    if not best > 0:
        return result("cannot rank", "every checkpoint scores 0: the estimator measured nothing.")
    if spread < FLAT_SPREAD:
        return result(
            "cannot rank",
            f"the scores of all {len(rows)} checkpoints lie within {100 * spread:.1f}% of the best "
            f"(< {100 * FLAT_SPREAD:.0f}%): the estimator does not tell them apart.",
        )
    if measured and all(measured):
        return result("cannot rank", "every measured term sits at its ceiling for every checkpoint.")
    swept = stability is not None
    if swept and not stability["pick_stable"] and not (stability["min_kendall_tau"] >= MIN_AGREEMENT):
        return result(
            "cannot rank",
            f"the pick changes with sigma ({_picks(stability)}) and the orderings disagree (Kendall's tau down to "
            f"{stability['min_kendall_tau']:.2f}): the ranking is the estimator's, not the teachers'.",
        )
    problems = []
    if not margin >= CLEAR_MARGIN:
        problems.append(
            f"{names} leads the next checkpoint by {100 * margin:.1f}% of the best score (< {100 * CLEAR_MARGIN:.0f}%)"
        )
    if any(measured):
        problems.append("one term is saturated for every checkpoint, so only the other ranks them")
    if swept and not stability["pick_stable"]:
        problems.append(
            f"the pick changes with sigma ({_picks(stability)}; Kendall's tau >= {stability['min_kendall_tau']:.2f})"
        )
    if problems:
        return result("weak preference", "; ".join(problems) + ".")
    sweep_note = (
        f", the same pick at every sigma in {stability['grid']} (Kendall's tau >= {stability['min_kendall_tau']:.2f})"
        if swept
        else ""
    )
    return result(
        "clear pick",
        f"{names} leads the next checkpoint by {100 * margin:.1f}% of the best score{sweep_note}.",
    )


def _picks(stability: dict[str, Any]) -> str:
    return ", ".join(f"{r:g}: {'+'.join(p)}" for r, p in zip(stability["grid"], stability["picks"]))

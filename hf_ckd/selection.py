"""MI-based teacher selection (Wang et al. 2022, arXiv:2210.06458; docs/selection.md): score every checkpoint of a trajectory by
I(X;F) + I(Y;F) on a probe set, pick T*, and read/write ``selection.json``.

The paper's Algorithm 1: estimate both terms for every candidate checkpoint, divide each term by its
maximum over the candidates (so neither dominates by scale), and pick the argmax of the sum. Raw and
normalised values are recorded, with how close each term is to its ceiling (log N, H(Y)): a saturated
estimate cannot rank checkpoints, and the output says so.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .mi import ESTIMATORS, MIEstimate, estimate_mi, estimator_accepts
from .stability import SATURATION_WARNING, kendall_tau, ranked_names, sweep_stability, verdict
from .teachers import load_teacher, model_logits, teacher_inputs
from .trajectory import Checkpoint, Trajectory, TrajectoryError

REPRESENTATIONS = ("penultimate", "logits", "probs")
SCHEMA_VERSION = 2  # 2: estimator_params, sigma_sweep, verdict; per-row ceilings (1 is read the same way)

__all__ = [
    "ESTIMATORS",
    "REPRESENTATIONS",
    "MIEstimate",
    "SelectionError",
    "estimate_mi",
    "extract_representation",
    "kendall_tau",
    "label_ceilings",
    "load_selection",
    "normalise_scores",
    "plot_selection",
    "probe_inputs",
    "read_selection",
    "score_checkpoint",
    "score_trajectory",
    "select",
    "selection_table",
    "selection_warnings",
    "sweep_stability",
    "teacher_spec",
    "verdict",
    "write_selection",
]


class SelectionError(ValueError):
    """A probe set, representation or selection file cannot be used; the message names it."""


# ---- representations -------------------------------------------------------------------------------


def _head_module(model: nn.Module, num_outputs: int) -> nn.Module:
    """The layer that maps the penultimate features to the outputs (its input is F)."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "get_classifier"):
        return timm_model.get_classifier()
    head = None
    for module in model.modules():  # the last Linear producing the outputs
        if isinstance(module, nn.Linear) and module.out_features == num_outputs:
            head = module
    if head is None:
        raise SelectionError(
            f"{type(model).__name__} has no linear layer with {num_outputs} outputs, so its penultimate features "
            "cannot be read; use representation='logits' or 'probs'."
        )
    return head


@torch.no_grad()
def extract_representation(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    representation: str = "penultimate",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``batches`` (dicts with ``labels``) and return ``(F [N, D], logits [N, C], labels [N])``.

    ``penultimate`` is the input of the output layer (timm ``get_classifier()``, or the last ``nn.Linear``
    with C outputs: BERT's pooled output, a CNN's pooled features); ``logits`` the outputs; ``probs`` the
    softmax at ``temperature``.
    """
    if representation not in REPRESENTATIONS:
        raise SelectionError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}.")
    captured: list[torch.Tensor] = []
    hook = None
    device = next(model.parameters()).device
    features, logits, labels = [], [], []
    for batch in batches:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if representation == "penultimate" and hook is None:
            probe = model_logits(model(**teacher_inputs(batch)))
            hook = _head_module(model, probe.shape[-1]).register_forward_pre_hook(
                lambda module, args: captured.append(args[0].detach())
            )
        out = model_logits(model(**teacher_inputs(batch))).float()
        if out.dim() != 2:
            raise SelectionError(
                f"{type(model).__name__} gives logits of shape {tuple(out.shape)}; selection needs one prediction "
                "per example (classification)."
            )
        logits.append(out)
        labels.append(batch["labels"])
        if representation == "penultimate":
            captured_features = captured.pop().float()
            captured.clear()
            features.append(captured_features.reshape(captured_features.shape[0], -1))
        elif representation == "probs":
            features.append(torch.softmax(out / temperature, dim=-1))
        else:
            features.append(out)
    if hook is not None:
        hook.remove()
    return torch.cat(features), torch.cat(logits), torch.cat(labels)


# ---- scoring -------------------------------------------------------------------------------------


def _check_probe(labels: torch.Tensor, min_samples: int) -> None:
    classes = torch.unique(labels).numel()
    if classes < 2:
        raise SelectionError(
            f"The probe set has {classes} class(es); I(Y;F) needs at least 2. Use a larger probe set."
        )
    if labels.numel() < min_samples:
        raise SelectionError(
            f"The probe set has {labels.numel()} samples; MI estimates need at least {min_samples}. "
            "Use a larger probe set."
        )


def probe_inputs(batches: Sequence[dict[str, Any]]) -> torch.Tensor:
    """The probe examples X as ``[N, P]`` float32: each batch's first floating-point model input
    (``pixel_values``, ``x``, ...; labels and masks excluded), flattened per example. What ``reconstruction``
    and ``infopro`` reconstruct. Raises :class:`SelectionError` when the inputs are token ids only."""
    rows = []
    for batch in batches:
        tensors = [v for v in teacher_inputs(batch).values() if isinstance(v, torch.Tensor)]
        floats = [v for v in tensors if v.dtype.is_floating_point and v.dim() >= 1]
        if not floats:
            raise SelectionError(
                f"The probe batches have no floating-point input (keys {sorted(teacher_inputs(batch))}); "
                "reconstruction needs continuous inputs (pixels, signals). Use kde or probe."
            )
        rows.append(floats[0].detach().float().cpu().reshape(floats[0].shape[0], -1))
    return torch.cat(rows)


def _sweep_params(params: dict[str, Any], relative: float) -> dict[str, Any]:
    swept = {k: v for k, v in params.items() if k not in ("noise_std", "noise_std_relative")}
    return {**swept, "noise_std_relative": relative}


def score_checkpoint(
    features: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    estimator: str = "kde",
    estimator_params: dict[str, Any] | None = None,
    inputs: torch.Tensor | None = None,
    sigma_sweep: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The MI part of one checkpoint's row: ``i_xf``, ``i_yf`` (nats), saturations, ceilings, ``params`` and,
    with ``sigma_sweep``, ``sigma_sweep`` (one ``{"noise_std_relative", "i_xf", "i_yf"}`` per sigma).

    Args:
        features: F ``[N, D]``; logits: ``[N, C]`` (what ``variational`` reads); labels: ``[N]``.
        estimator: a name in :data:`ESTIMATORS`; estimator_params: its parameters.
        inputs: the probe examples ``[N, P]`` (:func:`probe_inputs`), for estimators that take ``inputs``.
        sigma_sweep: relative sigmas (fractions of the median pairwise distance) at which a kde-family
            estimator is evaluated again, besides its own setting.
    """
    params = dict(estimator_params or {})
    if estimator_accepts(estimator, "inputs") and "inputs" not in params:
        if inputs is None:
            raise SelectionError(
                f"Estimator {estimator!r} reconstructs the inputs; pass inputs=probe_inputs(...)."
            )
        params["inputs"] = inputs
    mi_input = logits if estimator == "variational" else features
    estimate = estimate_mi(mi_input, labels, estimator=estimator, **params)
    saturation_x, saturation_y = estimate.saturation()
    row = {
        "i_xf": estimate.i_xf,
        "i_yf": estimate.i_yf,
        "saturation_x": saturation_x,
        "saturation_y": saturation_y,
        "ceiling_x": estimate.ceiling_x,
        "ceiling_y": estimate.ceiling_y,
        "params": estimate.params,
    }
    if sigma_sweep:
        if not estimator_accepts(estimator, "noise_std_relative"):
            raise SelectionError(
                f"A sigma sweep applies to the kde estimators (kde, kde_upper, kde_lower), not {estimator!r}."
            )
        row["sigma_sweep"] = []
        for relative in sigma_sweep:
            swept = estimate_mi(mi_input, labels, estimator=estimator, **_sweep_params(params, relative))
            row["sigma_sweep"].append(
                {"noise_std_relative": float(relative), "i_xf": swept.i_xf, "i_yf": swept.i_yf}
            )
    return row


def _normalised(values: list[float]) -> list[float]:
    """Each value over the largest finite one (Algorithm 1); NaN values (a term not measured) give 0."""
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite) if finite else 0.0
    return [v / top if math.isfinite(v) and top > 0 else 0.0 for v in values]


def normalise_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``i_xf_norm``, ``i_yf_norm`` and ``score = i_xf_norm + i_yf_norm`` to every row (in place, and
    returned), each term divided by its maximum over the rows. Swept rows also get ``sweep_scores`` (the
    score at every sigma, normalised over the rows at that sigma) and ``sweep_score_mean``."""
    for term in ("i_xf", "i_yf"):
        for row, value in zip(rows, _normalised([r[term] for r in rows])):
            row[f"{term}_norm"] = value
    for row in rows:
        row["score"] = row["i_xf_norm"] + row["i_yf_norm"]
    if rows and all("sigma_sweep" in r for r in rows):
        for row in rows:
            row["sweep_scores"] = [0.0] * len(row["sigma_sweep"])
        for s in range(len(rows[0]["sigma_sweep"])):
            x_norm = _normalised([r["sigma_sweep"][s]["i_xf"] for r in rows])
            y_norm = _normalised([r["sigma_sweep"][s]["i_yf"] for r in rows])
            for row, x, y in zip(rows, x_norm, y_norm):
                row["sweep_scores"][s] = x + y
        for row in rows:
            row["sweep_score_mean"] = sum(row["sweep_scores"]) / len(row["sweep_scores"])
    return rows


def score_trajectory(
    trajectory: Trajectory,
    probe_batches: Sequence[dict[str, Any]],
    estimator: str = "kde",
    representation: str = "penultimate",
    temperature: float = 1.0,
    estimator_params: dict[str, Any] | None = None,
    checkpoints: Sequence[Checkpoint] | None = None,
    model_init: Callable[..., nn.Module] | None = None,
    device: str | torch.device | None = None,
    min_samples: int = 20,
    progress: bool = True,
    batch_size: int = 256,
    sigma_sweep: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per checkpoint: name, step, fraction, accuracy, I(X;F), I(Y;F), normalised terms, score.

    Args:
        trajectory: the teacher run.
        probe_batches: the probe set: batches (dicts of tensors with ``labels``), e.g. a DataLoader, or a
            ``datasets.Dataset`` in torch format (batched here by ``batch_size``).
        estimator: a name in :data:`ESTIMATORS` (``kde`` by default).
        representation: ``penultimate`` (default), ``logits`` or ``probs`` (at ``temperature``).
        estimator_params: passed to :func:`estimate_mi` (``noise_std``, ``bins`` ...).
        checkpoints: candidates (default: every checkpoint of the trajectory).
        sigma_sweep: for the kde estimators, relative sigmas to evaluate as well (e.g. ``[0.25, 0.5, 1, 2]``);
            each row then holds ``sigma_sweep`` and ``sweep_scores``, and :func:`sweep_stability` says whether
            the ranking survives.

    ``score = I(X;F)/max I(X;F) + I(Y;F)/max I(Y;F)`` over the candidates (Algorithm 1 of the paper).
    """
    from tqdm.auto import tqdm

    if estimator not in ESTIMATORS:
        raise SelectionError(f"Unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}.")
    if sigma_sweep and not estimator_accepts(estimator, "noise_std_relative"):
        raise SelectionError(
            f"A sigma sweep applies to the kde estimators (kde, kde_upper, kde_lower), not {estimator!r}."
        )
    if hasattr(probe_batches, "column_names"):  # a datasets.Dataset (torch format): batch it here
        probe_batches = [probe_batches[i : i + batch_size] for i in range(0, len(probe_batches), batch_size)]
    batches = list(probe_batches)
    if not batches:
        raise SelectionError("The probe set is empty.")
    _check_probe(torch.cat([b["labels"] for b in batches]), min_samples)
    inputs = probe_inputs(batches) if estimator_accepts(estimator, "inputs") else None
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for checkpoint in tqdm(list(checkpoints or trajectory), desc="Scoring checkpoints", disable=not progress):
        model = load_teacher(checkpoint, model_init=model_init, device=device)
        features, logits, labels = extract_representation(model, batches, representation, temperature)
        del model
        row = {
            "name": checkpoint.name,
            "step": checkpoint.step,
            "fraction": round(checkpoint.fraction, 6),
            "accuracy": float((logits.argmax(-1) == labels).float().mean()),
        }
        row.update(
            score_checkpoint(features, logits, labels, estimator, estimator_params, inputs, sigma_sweep)
        )
        rows.append(row)
    return normalise_scores(rows)


def select(scores: Sequence[dict[str, Any]], k: int = 1, key: str = "score") -> list[str]:
    """Names of the ``k`` best-scoring checkpoints by ``row[key]`` (``score``, or ``sweep_score_mean`` after a
    sigma sweep; ties: the earlier step), best first."""
    if not 1 <= k <= len(scores):
        raise SelectionError(f"k={k} must be between 1 and the number of scored checkpoints ({len(scores)}).")
    return ranked_names(scores, key)[:k]


def saturation_warnings(scores: Sequence[dict[str, Any]]) -> list[str]:
    """Human-readable warnings when a term sits at its ceiling for every checkpoint (it cannot rank them)."""
    warnings = []
    for term, ceiling in (("saturation_x", "log N"), ("saturation_y", "H(Y)")):
        values = [r[term] for r in scores if r.get(term) is not None and math.isfinite(r[term])]
        if values and min(values) >= SATURATION_WARNING:
            warnings.append(
                f"{'I(X;F)' if term == 'saturation_x' else 'I(Y;F)'} is within {100 * (1 - SATURATION_WARNING):.0f}% "
                f"of its ceiling ({ceiling}) for every checkpoint: it does not rank them. Increase the noise "
                "(noise_std_relative) or use another estimator."
            )
    return warnings


def selection_warnings(
    scores: Sequence[dict[str, Any]], stability: dict[str, Any] | None = None
) -> list[str]:
    """:func:`saturation_warnings`, and a warning when a sigma sweep (``stability``, from
    :func:`sweep_stability`) picks different checkpoints at different sigmas."""
    warnings = saturation_warnings(scores)
    if stability is not None and not stability["pick_stable"]:
        picks = ", ".join(f"{r:g}: {'+'.join(p)}" for r, p in zip(stability["grid"], stability["picks"]))
        warnings.append(
            f"The pick changes with the kde noise sigma (relative sigma: pick {picks}; Kendall's tau between the "
            f"orderings {stability['min_kendall_tau']:.2f} to 1): the pick is not a property of the teacher alone."
        )
    return warnings


# ---- selection.json --------------------------------------------------------------------------------


def label_ceilings(labels: torch.Tensor) -> tuple[float, float]:
    """The ceilings of the two MI terms on a probe set of labels ``[N]``: log N for I(X;F) and the label
    entropy H(Y) for I(Y;F), in nats."""
    counts = torch.bincount(labels.long()).double()
    p = counts[counts > 0] / counts.sum()
    return math.log(len(labels)), float(-(p * p.log()).sum())


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plot_selection(
    path: str,
    rows: list[dict],
    selected: list[str],
    ceilings: tuple[float, float],
    estimator: str | None = None,
    verdict: dict[str, Any] | None = None,
) -> None:
    """A PNG of accuracy, I(X;F), I(Y;F) and the score against training fraction (``rows`` from
    :func:`score_trajectory`), the ``selected`` checkpoints marked.

    The ceilings are dashed: the rows' own (``ceiling_x``, ``ceiling_y``: the estimator's, e.g.
    ``½ K log(1 + max_snr)`` for ``reconstruction``), else ``ceilings`` (log N, H(Y)). A term the estimator
    does not measure says so. Swept rows add the terms at every sigma (thin lines) and the range of the normalised score over the
    sigmas (band). ``estimator`` and the ``verdict`` (:func:`verdict`) go in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [r["fraction"] for r in rows]
    chosen = [i for i, r in enumerate(rows) if r["name"] in selected]
    swept = bool(rows) and all("sigma_sweep" in r for r in rows)

    def ceiling_of(key: str, fallback: float) -> float | None:
        values = [r.get(key) for r in rows if key in r]
        return values[0] if values and _finite(values[0]) else (None if values else fallback)

    ceiling_x = ceiling_of("ceiling_x", ceilings[0])
    x_label = "log N" if ceiling_x is not None and abs(ceiling_x - ceilings[0]) < 1e-9 else "of the estimator"
    panels = [
        ("accuracy", "probe accuracy", None),
        ("i_xf", "I(X;F) [nats]", (x_label, ceiling_x)),
        ("i_yf", "I(Y;F) [nats]", ("H(Y)", ceiling_of("ceiling_y", ceilings[1]))),
        ("score", "score = I(X;F)/max + I(Y;F)/max", None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (key, title, ceiling) in zip(axes, panels):
        values = [r[key] if _finite(r.get(key)) else math.nan for r in rows]
        ax.set_title(title)
        ax.set_xlabel("fraction of training")
        if all(math.isnan(v) for v in values):
            ax.text(0.5, 0.5, f"not measured by {estimator or 'this estimator'}", ha="center", va="center",
                    transform=ax.transAxes, color="gray")  # fmt: skip
            continue
        if swept and key in ("i_xf", "i_yf"):
            for s, entry in enumerate(rows[0]["sigma_sweep"]):
                ax.plot(fractions, [r["sigma_sweep"][s][key] for r in rows], "-", lw=0.8, alpha=0.6,
                        label=f"sigma = {entry['noise_std_relative']:g} x median")  # fmt: skip
        if swept and key == "score":
            low = [min(r["sweep_scores"]) for r in rows]
            high = [max(r["sweep_scores"]) for r in rows]
            ax.fill_between(fractions, low, high, color="tab:blue", alpha=0.15, label="range over sigma")
        ax.plot(fractions, values, "o-", color="tab:blue", label="measured")
        ax.plot([fractions[i] for i in chosen], [values[i] for i in chosen], "*", color="tab:red", ms=16,
                label="selected")  # fmt: skip
        if ceiling is not None and ceiling[1] is not None and _finite(ceiling[1]):
            ax.axhline(ceiling[1], ls="--", color="gray", label=f"ceiling {ceiling[0]}")
        ax.legend(fontsize=7)
    title = f"estimator {estimator}" if estimator else ""
    if verdict is not None:
        title += f"{': ' if title else ''}{verdict['verdict']}"
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def selection_table(rows: list[dict], selected: list[str]) -> str:
    """The scores as a markdown table, one row per checkpoint, the selected ones marked (a NaN term: not
    measured by the estimator; after a sigma sweep, the score's range over the sigmas too)."""
    swept = bool(rows) and all("sweep_scores" in r for r in rows)
    lines = [
        "| checkpoint | step | fraction | accuracy | I(X;F) | I(Y;F) | I(X;F)/ceiling | I(Y;F)/H(Y) | score | "
        + ("score over sigma | " if swept else "")
        + "|",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if swept else "") + "---|",
    ]
    for r in rows:
        mark = "selected" if r["name"] in selected else ""
        cells = [
            r["name"], str(r["step"]), f"{r['fraction']:.2f}", f"{r['accuracy']:.4f}", _fmt(r["i_xf"], 4),
            _fmt(r["i_yf"], 4), _fmt(r["saturation_x"], 3), _fmt(r["saturation_y"], 3), f"{r['score']:.4f}",
        ]  # fmt: skip
        if swept:
            cells.append(f"{min(r['sweep_scores']):.3f}-{max(r['sweep_scores']):.3f}")
        lines.append("| " + " | ".join([*cells, mark]) + " |")
    return "\n".join(lines)


def _fmt(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "—"


def _strict_json(value: Any) -> Any:
    """NaN/Inf (e.g. I(X;F) of the variational estimator) as ``null``: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def write_selection(
    path: str,
    trajectory: Trajectory,
    scores: Sequence[dict[str, Any]],
    selected: Sequence[str],
    estimator: str,
    representation: str,
    probe: dict[str, Any],
    extra: dict[str, Any] | None = None,
    estimator_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``selection.json`` atomically (temporary file, then rename) and return its content.

    Besides the rows and the pick it records ``estimator_params`` (as given; tensors left out), the
    ``sigma_sweep`` stability (:func:`sweep_stability`; ``null`` when not swept), the ``verdict``
    (:func:`verdict`) and the ``warnings`` (saturated terms, a pick that moves with sigma).
    """
    stability = sweep_stability(scores, k=len(selected))
    judged = verdict(scores, selected, stability)
    params = {k: v for k, v in (estimator_params or {}).items() if not isinstance(v, torch.Tensor)}
    content = {
        "schema_version": SCHEMA_VERSION,
        "source": trajectory.source,
        "estimator": estimator,
        "estimator_params": params,
        "representation": representation,
        "probe": probe,
        "checkpoints": [_strict_json(row) for row in scores],
        "selected": list(selected),
        "sigma_sweep": stability,
        "verdict": judged,
        "warnings": selection_warnings(scores, stability),
        **(extra or {}),
    }
    content = _strict_json(content)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, allow_nan=False)
    os.replace(tmp, path)
    return content


def load_selection(path: str) -> dict[str, Any]:
    """The content of a ``selection.json`` (estimator, per-checkpoint scores, ``selected`` names), checked to
    hold a ``selected`` list of checkpoint names."""
    if not os.path.isfile(path):
        raise SelectionError(f"Selection file '{path}' does not exist; write it with hf-ckd select_teachers.")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as err:
        raise SelectionError(
            f"Selection file '{path}' is not valid JSON ({err}); re-run hf-ckd select_teachers."
        ) from err
    selected = content.get("selected") if isinstance(content, dict) else None
    if not selected or not isinstance(selected, list) or not all(isinstance(s, str) for s in selected):
        raise SelectionError(f"Selection file '{path}' has no 'selected' list of checkpoint names.")
    return content


def _same_source(a: str, b: str) -> bool:
    """Whether two trajectory sources name the same run: the same Hub repo id, or the same local folder."""
    if a == b:
        return True
    local = [os.path.exists(x) for x in (a, b)]
    return all(local) and os.path.realpath(a) == os.path.realpath(b)


def read_selection(path: str, trajectory: Trajectory | None = None) -> list[str]:
    """The selected checkpoint names of a ``selection.json``, checked against ``trajectory`` when given."""
    content = load_selection(path)
    selected = content["selected"]
    if trajectory is not None:
        written = content.get("source")
        missing = [name for name in selected if name not in trajectory.names]
        problems = []
        if written is not None and not _same_source(written, trajectory.source):
            problems.append(
                f"was written for trajectory '{written}', but this run's teacher is '{trajectory.source}' (its "
                "scores rank another run's checkpoints, even where the names agree)"
            )
        if missing:
            problems.append(
                f"names checkpoints {missing} that trajectory '{trajectory.source}' does not have ({trajectory.names})"
            )
        if problems:
            raise TrajectoryError(
                f"Selection file '{path}' {' and '.join(problems)}. Re-run hf-ckd select_teachers on this "
                "trajectory (or pass teacher_checkpoints instead)."
            )
    return selected


def teacher_spec(args, trajectory: Trajectory) -> str | list[str]:
    """The checkpoint spec a run uses: the names in ``args.teacher_selection`` when set, else
    ``args.teacher_checkpoints``."""
    selection = getattr(args, "teacher_selection", None)
    return read_selection(selection, trajectory) if selection else args.teacher_checkpoints

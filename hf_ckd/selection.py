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

from .mi import ESTIMATORS, MIEstimate, estimate_mi
from .teachers import load_teacher, model_logits, teacher_inputs
from .trajectory import Checkpoint, Trajectory, TrajectoryError

REPRESENTATIONS = ("penultimate", "logits", "probs")
SATURATION_WARNING = 0.98
SCHEMA_VERSION = 1

__all__ = [
    "ESTIMATORS",
    "REPRESENTATIONS",
    "MIEstimate",
    "SelectionError",
    "estimate_mi",
    "extract_representation",
    "load_selection",
    "read_selection",
    "score_trajectory",
    "select",
    "teacher_spec",
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

    ``score = I(X;F)/max I(X;F) + I(Y;F)/max I(Y;F)`` over the candidates (Algorithm 1 of the paper).
    """
    from tqdm.auto import tqdm

    if estimator not in ESTIMATORS:
        raise SelectionError(f"Unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}.")
    if hasattr(probe_batches, "column_names"):  # a datasets.Dataset (torch format): batch it here
        probe_batches = [probe_batches[i : i + batch_size] for i in range(0, len(probe_batches), batch_size)]
    batches = list(probe_batches)
    if not batches:
        raise SelectionError("The probe set is empty.")
    _check_probe(torch.cat([b["labels"] for b in batches]), min_samples)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for checkpoint in tqdm(list(checkpoints or trajectory), desc="Scoring checkpoints", disable=not progress):
        model = load_teacher(checkpoint, model_init=model_init, device=device)
        features, logits, labels = extract_representation(model, batches, representation, temperature)
        del model
        params = dict(estimator_params or {})
        mi_input = logits if estimator == "variational" else features
        estimate = estimate_mi(mi_input, labels, estimator=estimator, **params)
        saturation_x, saturation_y = estimate.saturation()
        rows.append(
            {
                "name": checkpoint.name,
                "step": checkpoint.step,
                "fraction": round(checkpoint.fraction, 6),
                "accuracy": float((logits.argmax(-1) == labels).float().mean()),
                "i_xf": estimate.i_xf,
                "i_yf": estimate.i_yf,
                "saturation_x": saturation_x,
                "saturation_y": saturation_y,
                "params": estimate.params,
            }
        )
    for term in ("i_xf", "i_yf"):
        finite = [r[term] for r in rows if math.isfinite(r[term])]
        top = max(finite) if finite else 0.0
        for row in rows:
            value = row[term]
            row[f"{term}_norm"] = value / top if math.isfinite(value) and top > 0 else 0.0
    for row in rows:
        row["score"] = row["i_xf_norm"] + row["i_yf_norm"]
    return rows


def select(scores: Sequence[dict[str, Any]], k: int = 1) -> list[str]:
    """Names of the ``k`` best-scoring checkpoints (ties: the earlier step), best first."""
    if not 1 <= k <= len(scores):
        raise SelectionError(f"k={k} must be between 1 and the number of scored checkpoints ({len(scores)}).")
    ranked = sorted(scores, key=lambda r: (-r["score"], r["step"]))
    return [r["name"] for r in ranked[:k]]


def saturation_warnings(scores: Sequence[dict[str, Any]]) -> list[str]:
    """Human-readable warnings when a term sits at its ceiling for every checkpoint (it cannot rank them)."""
    warnings = []
    for term, ceiling in (("saturation_x", "log N"), ("saturation_y", "H(Y)")):
        values = [r[term] for r in scores if math.isfinite(r[term])]
        if values and min(values) >= SATURATION_WARNING:
            warnings.append(
                f"{'I(X;F)' if term == 'saturation_x' else 'I(Y;F)'} is within {100 * (1 - SATURATION_WARNING):.0f}% "
                f"of its ceiling ({ceiling}) for every checkpoint: it does not rank them. Increase the noise "
                "(noise_std_relative) or use another estimator."
            )
    return warnings


# ---- selection.json --------------------------------------------------------------------------------


def label_ceilings(labels: torch.Tensor) -> tuple[float, float]:
    """The ceilings of the two MI terms on a probe set of labels ``[N]``: log N for I(X;F) and the label
    entropy H(Y) for I(Y;F), in nats."""
    counts = torch.bincount(labels.long()).double()
    p = counts[counts > 0] / counts.sum()
    return math.log(len(labels)), float(-(p * p.log()).sum())


def plot_selection(path: str, rows: list[dict], selected: list[str], ceilings: tuple[float, float]) -> None:
    """A PNG of accuracy, I(X;F), I(Y;F) and the score against training fraction (``rows`` from
    :func:`score_trajectory`), the ``selected`` checkpoints marked and the ceilings (log N, H(Y)) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [r["fraction"] for r in rows]
    chosen = [i for i, r in enumerate(rows) if r["name"] in selected]
    panels = [
        ("accuracy", "probe accuracy", None),
        ("i_xf", "I(X;F) [nats]", ("log N", ceilings[0])),
        ("i_yf", "I(Y;F) [nats]", ("H(Y)", ceilings[1])),
        ("score", "score = I(X;F)/max + I(Y;F)/max", None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title, ceiling) in zip(axes, panels):
        values = [r[key] for r in rows]
        ax.plot(fractions, values, "o-", color="tab:blue")
        ax.plot(
            [fractions[i] for i in chosen],
            [values[i] for i in chosen],
            "*",
            color="tab:red",
            ms=16,
            label="selected",
        )
        if ceiling is not None and math.isfinite(ceiling[1]):
            ax.axhline(ceiling[1], ls="--", color="gray", label=f"ceiling {ceiling[0]}")
        ax.set_title(title)
        ax.set_xlabel("fraction of training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def selection_table(rows: list[dict], selected: list[str]) -> str:
    """The scores as a markdown table, one row per checkpoint, the selected ones marked."""
    lines = [
        "| checkpoint | step | fraction | accuracy | I(X;F) | I(Y;F) | I(X;F)/log N | I(Y;F)/H(Y) | score | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "selected" if r["name"] in selected else ""
        lines.append(
            f"| {r['name']} | {r['step']} | {r['fraction']:.2f} | {r['accuracy']:.4f} | {r['i_xf']:.4f} | "
            f"{r['i_yf']:.4f} | {r['saturation_x']:.3f} | {r['saturation_y']:.3f} | {r['score']:.4f} | {mark} |"
        )
    return "\n".join(lines)


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
) -> dict[str, Any]:
    """Write ``selection.json`` atomically (temporary file, then rename) and return its content."""
    scores = [_strict_json(row) for row in scores]
    content = {
        "schema_version": SCHEMA_VERSION,
        "source": trajectory.source,
        "estimator": estimator,
        "representation": representation,
        "probe": probe,
        "checkpoints": list(scores),
        "selected": list(selected),
        "warnings": saturation_warnings(scores),
        **(extra or {}),
    }
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

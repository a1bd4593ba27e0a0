"""Metrics through ``evaluate``: the Hub module when it can be had, the bundled copy offline."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)
BUNDLED_ACCURACY = os.path.join(os.path.dirname(__file__), "evaluate_metrics", "accuracy")


def load_accuracy():
    """``evaluate.load("accuracy")``, falling back to the bundled module when offline or not cached."""
    import evaluate

    try:
        return evaluate.load("accuracy")
    except Exception as err:  # offline (HF_HUB_OFFLINE=1), no cache, no network
        logger.info(
            "evaluate.load('accuracy') unavailable (%s); using hf_ckd's bundled copy.", type(err).__name__
        )
        return evaluate.load(BUNDLED_ACCURACY)


def argmax_logits(logits, labels):
    """``preprocess_logits_for_metrics``: keep the argmax ids ``[B, T]`` instead of ``[B, T, V]`` logits
    during evaluation (run_clm does the same), so a large vocabulary does not fill memory."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(dim=-1)


def classification_metrics(token_level: bool = False) -> Callable:
    """A ``compute_metrics`` for ``Trainer``: top-1 accuracy through ``evaluate``.

    Predictions may be logits ``[..., C]`` or argmax ids shaped like the labels (see :func:`argmax_logits`).
    For ``token_level`` (causal LMs), position t is scored against label t+1; ``-100`` is skipped.
    """
    metric = load_accuracy()

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, np.asarray(eval_pred.label_ids)
        predictions = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        if predictions.shape != labels.shape:
            predictions = predictions.argmax(-1)
        if token_level:
            predictions, labels = predictions[:, :-1], labels[:, 1:]
        keep = labels != -100
        result = metric.compute(predictions=predictions[keep], references=labels[keep])
        return {name: float(value) for name, value in result.items()}

    return compute_metrics

"""Top-1 accuracy as an ``evaluate`` module, bundled so recipes score offline.

Same inputs and output as the Hub's ``evaluate-metric/accuracy``: ``predictions`` and ``references`` are
integer class ids; the result is ``{"accuracy": fraction correct}`` (or the count with ``normalize=False``).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-1 accuracy: the fraction of predictions equal to their references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    normalize (`bool`, defaults to `True`): return the fraction correct, else the number correct.
    sample_weight (`list[float]`, *optional*): per-example weights.
Returns:
    accuracy (`float`): in [0, 1] when normalised.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float((correct * weights).sum())
        return {"accuracy": total / weights.sum() if normalize else total}

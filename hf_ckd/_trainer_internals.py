"""The private ``transformers.Trainer`` attributes hf_ckd relies on, in one place.

No public hook exists for these two needs, so they are set here and nowhere else, and
``tests/test_internals.py`` fails loudly (naming the attribute) when a transformers release changes them:

* ``Trainer._signature_columns`` - the input names Trainer's ``RemoveColumnsCollator`` keeps (the
  student's forward arguments). A soft-target cache's ``cache_index`` / ``cache_view`` must survive it so
  ``compute_loss`` can look the targets up; they never reach the student.
* ``Trainer._loss_shifts_labels`` - whether Trainer counts ``num_items_in_batch`` over ``labels[..., 1:]``
  (the causal shift). Trainer decides it from the model's ``loss_type``, which many causal LMs leave unset
  (``GPT2LMHeadModel``); hf_ckd's loss shifts whenever the student is a causal LM, so the count must agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SIGNATURE_COLUMNS = "_signature_columns"
LOSS_SHIFTS_LABELS = "_loss_shifts_labels"


def keep_input_columns(trainer: Any, names: Sequence[str]) -> None:
    """Add ``names`` to the inputs Trainer keeps (call after ``Trainer._set_signature_columns_if_needed``)."""
    columns = getattr(trainer, SIGNATURE_COLUMNS)
    setattr(trainer, SIGNATURE_COLUMNS, [*columns, *(n for n in names if n not in columns)])


def count_label_tokens_shifted(trainer: Any, shifted: bool) -> None:
    """Make Trainer count the label tokens of a batch as the loss scores them: ``labels[..., 1:]`` when
    ``shifted`` (a causal LM), every label otherwise."""
    setattr(trainer, LOSS_SHIFTS_LABELS, shifted)

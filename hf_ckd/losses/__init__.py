"""Knowledge-distillation losses: pure functions of tensors (torch and the standard library only).

* :mod:`hf_ckd.losses.logit`: KD from logits, classification and token level, one teacher or a weighted
  ensemble (Hinton et al. 2015, arXiv:1503.02531; the ensemble target of checkpoint KD, Wang et al. 2022,
  arXiv:2210.06458): :func:`ensemble_kd_loss`, :func:`kd_loss`, :func:`ensemble_log_probs`,
  :func:`shift_for_causal_lm`;
* :mod:`hf_ckd.losses.linear`: the same loss from hidden states and LM heads, never holding ``[N, V]``
  logits: :func:`linear_distillation_loss` (modes ``full``, ``chunked``, ``sampled``), :func:`linear_kd_loss`;
* :mod:`hf_ckd.losses.sampled`: the teacher's samples, :class:`TeacherSamples` (:func:`stratified_targets`,
  :func:`draw_targets`, :func:`cat_samples`), and the sampled estimator;
* :mod:`hf_ckd.losses._kernels`: the autograd Functions and sparse kernels under the last two.

The formulas, exactly as implemented: docs/losses.md and docs/large_vocab.md.
"""

from .._options import AVERAGE_MODES, KD_LOSS_MODES, normalize_weights
from .linear import linear_distillation_loss, linear_kd_loss
from .logit import ensemble_kd_loss, ensemble_log_probs, kd_loss, shift_for_causal_lm
from .sampled import TeacherSamples, cat_samples, draw_targets, stratified_targets

__all__ = [
    "AVERAGE_MODES",
    "KD_LOSS_MODES",
    "TeacherSamples",
    "cat_samples",
    "draw_targets",
    "ensemble_kd_loss",
    "ensemble_log_probs",
    "kd_loss",
    "linear_distillation_loss",
    "linear_kd_loss",
    "normalize_weights",
    "shift_for_causal_lm",
    "stratified_targets",
]

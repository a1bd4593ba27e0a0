"""``CheckpointDistillTrainer``: a ``transformers.Trainer`` whose loss distils teacher checkpoints."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate.utils import DistributedType
from huggingface_hub import ModelCard
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer_callback import ExportableState

from .config import CheckpointDistillConfig
from .losses import ensemble_kd_loss
from .selection import teacher_spec
from .teachers import TeacherEnsemble, TeacherLoadError, TeacherModelInit, model_logits, output_size
from .trajectory import Trajectory

LABEL_KEYS = ("labels", "shift_labels")


def is_causal_lm(model: nn.Module) -> bool:
    """Whether the model's own loss scores position t against label t+1 (decoder-only LMs)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    return (
        LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss
        or type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )


class TeacherLineageCallback(TrainerCallback, ExportableState):
    """Keeps the teachers' lineage in every saved ``trainer_state.json`` (``stateful_callbacks``)."""

    def __init__(self, lineage: dict[str, Any]):
        self.lineage = lineage

    def state(self) -> dict[str, Any]:
        return {"args": {"lineage": self.lineage}, "attributes": {}}


class CheckpointDistillTrainer(Trainer):
    """Trainer that distils a snapshot ensemble of a teacher's checkpoints into ``model``.

    The loss is ``alpha * CE + (1 - alpha) * tau^2 * KL(P_ens^tau || p_S^tau)`` (DESIGN.md §3), over classes
    for classifiers and over vocabulary positions (with the causal shift) for language models. Evaluation
    scores the student alone (``eval_loss`` is its cross-entropy). ``loss_ce`` and ``loss_kd`` are logged
    beside ``loss``.

    Args:
        model: the student (a transformers model, ``TimmWrapperForImageClassification``, or any module
            returning logits).
        args: a :class:`CheckpointDistillConfig`.
        teachers: a ready :class:`TeacherEnsemble`; otherwise built from ``args.teacher`` and
            ``args.teacher_checkpoints``.
        teacher_model_init: builds a teacher architecture for checkpoints without a transformers
            ``config.json``; see :func:`hf_ckd.teachers.load_teacher`.
        Other arguments as for ``transformers.Trainer``.

    Every problem with the teachers (missing paths, broken checkpoints, a spec that matches nothing,
    a label space that differs from the student's) raises before ``Trainer.__init__`` runs, so nothing is
    written to ``output_dir``.
    """

    _tag_names = ["hf-ckd", "knowledge-distillation", "checkpoint-distillation"]
    _name = "Checkpoint distillation"
    _paper = {"title": "Efficient Knowledge Distillation from Model Checkpoints", "id": "2210.06458"}
    # compute_loss normalises by num_items_in_batch itself, or by the accumulation steps when there is none.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: CheckpointDistillConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_metrics=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        *,
        teachers: TeacherEnsemble | None = None,
        teacher_model_init: TeacherModelInit | None = None,
        **kwargs,
    ):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "CheckpointDistillTrainer computes its own loss; compute_loss_func is not supported. Subclass and "
                "override compute_loss instead."
            )
        if not isinstance(args, CheckpointDistillConfig):
            raise TypeError(
                f"CheckpointDistillTrainer needs args=CheckpointDistillConfig(...), got {type(args).__name__}."
            )
        if teachers is None:
            if not args.teacher:
                raise ValueError(
                    "No teacher: set CheckpointDistillConfig(teacher='path/to/teacher/output_dir') or pass teachers=."
                )
            trajectory = Trajectory.from_local(args.teacher)
            teachers = TeacherEnsemble.from_trajectory(
                trajectory,
                teacher_spec(args, trajectory),
                args.teacher_weights,
                args.ensemble_average,
                model_init=teacher_model_init,
                dtype=args.teacher_dtype,
                trust_remote_code=args.teacher_trust_remote_code,
                allow_unsafe_pickle=args.teacher_allow_unsafe_pickle,
            )
        elif args.teacher_dtype is not None:
            teachers.to(dtype=args.teacher_dtype)
        self.teachers = teachers
        if model is not None:
            self._check_label_space(model)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.lineage = self._lineage(args)
        output_dir_existed = args.output_dir is not None and os.path.exists(args.output_dir)
        callbacks = [*(callbacks or []), TeacherLineageCallback(self.lineage)]
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        if model is None:  # built by model_init inside Trainer.__init__, which already made output_dir
            try:
                self._check_label_space(self.model)
            except TeacherLoadError:
                if (
                    not output_dir_existed
                    and os.path.isdir(args.output_dir)
                    and not os.listdir(args.output_dir)
                ):
                    os.rmdir(args.output_dir)
                raise
        # compute_loss accepts num_items_in_batch whatever the student's forward takes; this makes Trainer
        # count the label tokens of the whole accumulated (and, across devices, global) batch for it.
        self.model_accepts_loss_kwargs = True
        self._shift_labels = is_causal_lm(self.accelerator.unwrap_model(self.model))
        # Trainer counts num_items_in_batch over labels[..., 1:] only for models whose loss_type it recognises
        # as causal (GPT2LMHeadModel's is None); count the positions this loss actually scores.
        self._loss_shifts_labels = self._shift_labels
        self._place_teachers()

    # ---- set-up ------------------------------------------------------------------------------------

    def _check_label_space(self, model: nn.Module) -> None:
        student, teacher = output_size(model), self.teachers.output_size
        if student is not None and teacher is not None and student != teacher:
            names = ", ".join(c.name for c in self.teachers.checkpoints)
            raise TeacherLoadError(
                f"The teacher checkpoints ({names}) predict over {teacher} classes/tokens but the student over "
                f"{student} (num_labels / vocabulary size). Build the student with the teacher's label space "
                f"(num_labels={teacher}, or the teacher's tokenizer and vocab_size)."
            )

    def _place_teachers(self) -> None:
        """Move teachers to the accelerator's device: prepared for autocast, never wrapped in DDP."""
        accelerator = self.accelerator
        for i, teacher in enumerate(self.teachers.models):
            if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
                # Kept whole on every rank (not sharded): fine for teachers that fit one device.
                self.teachers.models[i] = teacher.to(accelerator.device)
            else:
                self.teachers.models[i] = accelerator.prepare_model(teacher, evaluation_mode=True)

    def _lineage(self, args: CheckpointDistillConfig) -> dict[str, Any]:
        given = not args.teacher  # a ready TeacherEnsemble was passed: the config's spec was not used
        names = ",".join(c.name for c in self.teachers.checkpoints)
        return {
            "teacher": self.teachers.checkpoints[0].source if given else args.teacher,
            "teacher_checkpoints": names if given else args.teacher_checkpoints,
            "teacher_selection": args.teacher_selection,
            **self.teachers.describe(),
            "temperature": args.temperature,
            "alpha": args.alpha,
        }

    # ---- loss --------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        training = model.training
        labels, pre_shifted = inputs.get("labels"), False
        if inputs.get("shift_labels") is not None:
            labels, pre_shifted = inputs["shift_labels"], True
        outputs = model(**{k: v for k, v in inputs.items() if k not in LABEL_KEYS})
        student_logits = model_logits(outputs)

        alpha = self.args.alpha if training else 1.0  # evaluation scores the student alone
        has_labels = labels is not None
        if (
            not has_labels
            and alpha == 0
            and student_logits.dim() == 3
            and inputs.get("attention_mask") is not None
        ):
            # Pure KD without labels: distil every non-padding position (the label values are never read).
            labels = torch.where(inputs["attention_mask"].bool(), 0, -100)
        needs_teachers = training and alpha < 1
        teacher_logits = self.teachers.logits(inputs, step=self.state.global_step) if needs_teachers else []
        loss, parts = ensemble_kd_loss(
            student_logits,
            teacher_logits,
            labels,
            temperature=self.args.temperature,
            alpha=alpha,
            weights=self.teachers.weights,
            average=self.teachers.average,
            shift_labels=self._shift_labels and not pre_shifted,
            num_items_in_batch=num_items_in_batch,
        )
        if num_items_in_batch is not None:
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts every process's tokens and DDP averages gradients over processes.
                loss = loss * self.accelerator.num_processes
            denom = num_items_in_batch
        else:
            if training:
                loss = loss / self.current_gradient_accumulation_steps
            denom = parts["num_items"].clamp(min=1)
        if training:
            self._metrics["count"].append(parts["num_items"].float())
            if needs_teachers:
                self._metrics["kd_sum"].append(parts["kd"] * denom)
            if has_labels:
                self._metrics["ce_sum"].append(parts["ce"] * denom)
        if not isinstance(outputs, Mapping):
            # Trainer.prediction_step reads a tuple output as (loss, logits, ...); the student ran without labels.
            outputs = {"logits": student_logits}
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics["count"]:
            count = self.accelerator.gather(torch.stack(self._metrics["count"]).sum().reshape(1)).sum()
            for key, name in (("ce_sum", "loss_ce"), ("kd_sum", "loss_kd")):
                if self._metrics[key]:
                    total = self.accelerator.gather(torch.stack(self._metrics[key]).sum().reshape(1)).sum()
                    logs[name] = round((total / count.clamp(min=1)).item(), 6)
            self._metrics.clear()
        super().log(logs, start_time)

    # ---- lineage -----------------------------------------------------------------------------------

    def create_model_card(self, *args, tags: str | list[str] | None = None, **kwargs) -> None:
        """Trainer's model card, tagged, with a section listing the teacher checkpoints that taught."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in self._tag_names if t not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path)
        card.data["distillation"] = {
            "teacher": self.lineage["teacher"],
            "checkpoints": [
                {k: c[k] for k in ("name", "step", "fraction", "weight")} for c in self.lineage["checkpoints"]
            ],
            "ensemble_average": self.lineage["average"],
            "temperature": self.lineage["temperature"],
            "alpha": self.lineage["alpha"],
        }
        rows = "\n".join(
            f"| {c['name']} | {c['step']} | {c['fraction']:.3f} | {c['weight']:.3f} |"
            for c in self.lineage["checkpoints"]
        )
        card.text += (
            "\n## Distillation\n\n"
            f"Distilled with hf_ckd from teacher `{self.lineage['teacher']}` "
            f"(temperature {self.lineage['temperature']}, alpha {self.lineage['alpha']}, "
            f"ensemble average `{self.lineage['average']}`).\n\n"
            "| checkpoint | step | fraction of training | weight |\n|---|---|---|---|\n" + rows + "\n"
        )
        card.save(path)

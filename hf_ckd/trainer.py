"""``CheckpointDistillTrainer``: a ``transformers.Trainer`` whose loss distils teacher checkpoints."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from . import _trainer_internals as internals
from .cache import CACHE_KEYS, ReplayViewCallback, ReplayViews, collate_with_cache_keys
from .callbacks import TeacherSourceCallback
from .config import CheckpointDistillConfig
from .export import build_model_card, export_timm_folder, is_checkpoint_folder
from .losses import ensemble_kd_loss, linear_distillation_loss, shift_for_causal_lm
from .modeling import is_causal_lm, is_timm_model, max_positions
from .run_folders import resolve_resume_checkpoint
from .schedules import TeacherSchedule
from .sources import TeacherSource, build_teacher_source
from .teachers import TeacherEnsemble, TeacherLoadError, TeacherModelInit, model_logits
from .trajectory import Checkpoint

LABEL_KEYS = ("labels", "shift_labels")


class StudentOutputError(RuntimeError):
    """The student's loss became NaN or Inf during training (raised before the step's backward)."""


NON_STUDENT_INPUTS = (*LABEL_KEYS, *CACHE_KEYS)


class CheckpointDistillTrainer(Trainer):
    """Trainer that distils a snapshot ensemble of a teacher's checkpoints into ``model``.

    The loss is ``alpha * CE + (1 - alpha) * tau^2 * KL(P_ens^tau || p_S^tau)`` (Hinton et al. 2015, arXiv:1503.02531; docs/losses.md), over classes
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

    With ``args.soft_target_cache`` no teacher is loaded: the targets are read from the cache, whose
    fingerprint must match the run (teachers' files, weights, temperature, and ``train_dataset``, a
    :class:`hf_ckd.cache.ReplayViews`). With ``args.kd_loss`` ``chunked``/``sampled``, causal-LM students are
    distilled from hidden states and LM heads (:func:`hf_ckd.losses.linear_distillation_loss`) without the
    ``[tokens, vocabulary]`` logits.

    Every problem with the teachers (missing paths, broken checkpoints, a spec that matches nothing,
    a label space that differs from the student's) raises before ``Trainer.__init__`` runs, so nothing is
    written to ``output_dir``.
    """

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
        teacher_schedule: TeacherSchedule | None = None,
        teacher_source: TeacherSource | None = None,
        teacher_model: nn.Module | str | None = None,
        **kwargs,
    ):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "CheckpointDistillTrainer computes its own loss; compute_loss_func is not supported. Subclass and "
                "override compute_loss instead."
            )
        if isinstance(args, TrainingArguments) and not isinstance(args, CheckpointDistillConfig):
            args = _as_distill_config(args)
        if not isinstance(args, CheckpointDistillConfig):
            raise TypeError(
                f"CheckpointDistillTrainer needs args=CheckpointDistillConfig(...) (or TrainingArguments, converted "
                f"with the KD defaults), got {type(args).__name__}."
            )
        if teacher_model is not None:  # TRL's keyword: one teacher, an instance or a path / hub:ORG/NAME spec
            teachers = _teacher_from_model(teacher_model, args, teachers, teacher_source, teacher_schedule)
        if teacher_source is not None and (teachers is not None or teacher_schedule is not None):
            raise ValueError(
                "teacher_source= already holds the teachers: do not pass teachers= or teacher_schedule=."
            )
        # Every problem with the teachers is raised here, before Trainer.__init__ writes anything.
        self.teacher_source = teacher_source or build_teacher_source(
            args, teachers=teachers, schedule=teacher_schedule, model_init=teacher_model_init
        )
        self.teacher_source.check_run(args, train_dataset)
        if model is not None:
            self.teacher_source.check_student(model)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._eval_metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.lineage = {
            **self.teacher_source.lineage(args.max_steps),
            "temperature": args.temperature,
            "alpha": args.alpha,
        }
        callbacks = [*(callbacks or []), TeacherSourceCallback(self.teacher_source, self.lineage, self.log)]
        if isinstance(
            train_dataset, ReplayViews
        ):  # view = epoch mod views, the view the targets were cached for
            callbacks.append(ReplayViewCallback(train_dataset))
            if data_collator is not None:
                data_collator = collate_with_cache_keys(data_collator)
        output_dir_existed = args.output_dir is not None and os.path.exists(args.output_dir)
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
                self.teacher_source.check_student(self.model)
            except TeacherLoadError:
                if (
                    not output_dir_existed
                    and os.path.isdir(args.output_dir)
                    and not os.listdir(args.output_dir)
                ):
                    os.rmdir(args.output_dir)
                raise
        student = self.accelerator.unwrap_model(self.model)
        # compute_loss accepts num_items_in_batch whatever the student's forward takes; this makes Trainer
        # count the label tokens of the whole accumulated (and, across devices, global) batch for it.
        self.model_accepts_loss_kwargs = True
        self._shift_labels = is_causal_lm(student)
        internals.count_label_tokens_shifted(self, self._shift_labels)
        self._linear_kd = args.kd_loss != "full"
        if self._linear_kd:  # the mode the user chose is honoured or refused, never swapped for full logits
            self._check_linear_kd(student)
        self._kd_draws = (-1, 0)  # (global step, draws made at it): seeds kd_loss='sampled' reproducibly
        self._input_limits = self._limits(student)
        # Teachers go where the student is, never into DDP/FSDP wrappers; their forwards run under the
        # accelerator's autocast (mixed precision), as the student's do.
        device = self.accelerator.device
        self.teacher_source.place(lambda teacher: teacher.to(device), self.accelerator.autocast)

    def _limits(self, student: nn.Module) -> dict[str, tuple[int, str]]:
        """The smallest vocabulary and number of positions that the student and the teachers embed, with the
        model that sets each: token ids or sequence lengths beyond them would fail as an IndexError deep
        inside an embedding, so batches are checked against them first."""
        try:
            teacher_config = self.teacher_source.teacher_config()
        except Exception:  # a plain module without config.json: nothing to read
            teacher_config = None
        embeddings = student.get_input_embeddings() if hasattr(student, "get_input_embeddings") else None
        found: dict[str, list[tuple[int, str]]] = {"vocab": [], "positions": []}
        if isinstance(getattr(embeddings, "num_embeddings", None), int):
            found["vocab"].append((embeddings.num_embeddings, "the student"))
        for config, who in (
            (getattr(student, "config", None), "the student"),
            (teacher_config, "the teachers"),
        ):
            if config is None:
                continue
            if who == "the teachers" and isinstance(getattr(config, "vocab_size", None), int):
                found["vocab"].append((config.vocab_size, who))
            if (positions := max_positions(config)) is not None:
                found["positions"].append((positions, who))
        return {key: min(values) for key, values in found.items() if values}

    def _check_inputs(self, inputs: Mapping[str, Any]) -> None:
        ids = inputs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.numel() == 0 or ids.is_floating_point():
            return
        if "positions" in self._input_limits and ids.shape[-1] > self._input_limits["positions"][0]:
            limit, who = self._input_limits["positions"]
            raise ValueError(
                f"The batch holds sequences of {ids.shape[-1]} tokens but {who} embed(s) only {limit} positions "
                "(max_position_embeddings / n_positions). Cut the data into shorter blocks (block_size / "
                "max_length) or use models with more positions."
            )
        if "vocab" in self._input_limits:
            limit, who = self._input_limits["vocab"]
            largest = int(ids.max())
            if largest >= limit or int(ids.min()) < 0:
                raise ValueError(
                    f"The batch holds token id {largest if largest >= limit else int(ids.min())} but {who} embed(s) "
                    f"ids 0..{limit - 1} (vocab_size {limit}). Tokenise with the teacher's tokenizer, or build the "
                    "student with the teacher's vocabulary."
                )

    @property
    def teachers(self) -> TeacherEnsemble | None:
        """The checkpoints teaching now, as a :class:`~hf_ckd.teachers.TeacherEnsemble` (for a schedule, the
        active set; ``None`` when the targets come from a soft-target cache)."""
        return self.teacher_source.ensemble

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``Trainer.train``, resuming only from a complete checkpoint: ``resume_from_checkpoint=True`` takes
        the latest complete ``checkpoint-<step>`` of ``output_dir`` (skipping, with a warning, one a kill
        during a save left incomplete, where transformers would take it and fail), and a folder that is not a
        complete checkpoint is refused with a ``ResumeError`` that names the one to use
        (:func:`hf_ckd.run_folders.resolve_resume_checkpoint`)."""
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- set-up ------------------------------------------------------------------------------------

    def _check_linear_kd(self, model: nn.Module) -> None:
        import inspect

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not self._shift_labels:
            raise ValueError(
                f"kd_loss={self.args.kd_loss!r} is token-level KD of causal LMs (it chunks or samples the "
                f"vocabulary); {type(model).__name__} is not a causal LM, so there is nothing to chunk: use "
                "kd_loss='full'."
            )
        if head is None or "logits_to_keep" not in inspect.signature(model.forward).parameters:
            raise ValueError(
                f"kd_loss={self.args.kd_loss!r} needs a causal LM whose forward takes logits_to_keep and that has "
                f"get_output_embeddings() ({type(model).__name__} does not); use kd_loss='full'."
            )
        vocab = head.weight.shape[0]
        sampled_online = self.args.kd_loss == "sampled" and self.args.soft_target_cache is None
        if sampled_online and self.args.kd_num_samples > vocab:
            raise ValueError(
                f"kd_num_samples={self.args.kd_num_samples} exceeds the vocabulary ({vocab}); use at most {vocab} "
                f"(e.g. {max(1, vocab // 50)}, 2 percent)."
            )

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the replayed view's keys through Trainer's column removal: compute_loss looks the targets up.
        super()._set_signature_columns_if_needed()
        internals.keep_input_columns(self, CACHE_KEYS)

    # ---- loss --------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        training = model.training
        self._check_inputs(inputs)
        labels, pre_shifted = inputs.get("labels"), False
        if inputs.get("shift_labels") is not None:
            labels, pre_shifted = inputs["shift_labels"], True
        alpha = self.args.alpha if training else 1.0  # evaluation scores the student alone
        if training and self._linear_kd and alpha < 1:  # the kd_loss mode the user chose, labels or not
            has_labels = labels is not None
            if not has_labels:
                labels, pre_shifted = self._pure_kd_labels(inputs, alpha), False
            return self._compute_linear_kd_loss(
                model, inputs, labels, pre_shifted, alpha, num_items_in_batch, has_labels
            )
        outputs = model(**{k: v for k, v in inputs.items() if k not in NON_STUDENT_INPUTS})
        student_logits = model_logits(outputs)

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
        eval_divergence = not training and self.args.eval_kd_divergence
        log_target = None
        if needs_teachers or eval_divergence:
            log_target = self.teacher_source.log_targets(
                inputs, self.args.temperature, step=self.state.global_step
            )
            log_target = log_target.to(student_logits.device)
        loss, parts = ensemble_kd_loss(
            student_logits,
            [],
            labels,
            temperature=self.args.temperature,
            alpha=alpha,
            shift_labels=self._shift_labels and not pre_shifted,
            num_items_in_batch=num_items_in_batch,
            log_target=log_target,
            beta=self.args.beta,
        )
        if training:
            self._check_finite(loss, parts)
        elif eval_divergence:  # summed over the eval set, logged as eval_kd_divergence (see log)
            self._eval_metrics["count"].append(parts["num_items"].float())
            self._eval_metrics["divergence_sum"].append(parts["divergence"] * parts["num_items"])
        loss = self._scale_and_record(loss, parts, num_items_in_batch, training, needs_teachers, has_labels)
        if not isinstance(outputs, Mapping):
            # Trainer.prediction_step reads a tuple output as (loss, logits, ...); the student ran without labels.
            outputs = {"logits": student_logits}
        return (loss, outputs) if return_outputs else loss

    def _scale_and_record(self, loss, parts, num_items_in_batch, training, needs_teachers, has_labels):
        """Scale the loss for gradient accumulation / token averaging and keep its parts for logging."""
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
                self._metrics["divergence_sum"].append(parts["divergence"] * denom)
            if has_labels:
                self._metrics["ce_sum"].append(parts["ce"] * denom)
        return loss

    @staticmethod
    def _pure_kd_labels(inputs: Mapping[str, Any], alpha: float) -> torch.Tensor:
        """Labels that keep every non-padding position (their values are never read) for pure KD (alpha=0)
        of a batch without labels, as the logit path distils it."""
        if alpha > 0:
            raise ValueError(
                f"alpha={alpha} weights a hard-label term but the batch has no labels; pass labels or alpha=0."
            )
        if inputs.get("attention_mask") is not None:
            return torch.where(inputs["attention_mask"].bool(), 0, -100)
        if inputs.get("input_ids") is None:
            raise ValueError("Pure KD without labels needs input_ids (or an attention_mask) in the batch.")
        return torch.zeros_like(inputs["input_ids"])

    def _compute_linear_kd_loss(
        self, model, inputs, labels, pre_shifted, alpha, num_items_in_batch, has_labels=True
    ):
        """Token-level KD from the last hidden states and LM heads (``kd_loss`` chunked/sampled): neither the
        student nor the teachers materialise ``[tokens, vocabulary]`` logits (``logits_to_keep=1``)."""
        student_inputs = {k: v for k, v in inputs.items() if k not in NON_STUDENT_INPUTS}
        outputs = model(**student_inputs, output_hidden_states=True, logits_to_keep=1)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        hidden = outputs.hidden_states[-1]
        teacher_inputs = {
            "num_samples": self.args.kd_num_samples,
            **self.teacher_source.linear_inputs(inputs, hidden.device, hidden.shape[1]),
        }
        if not pre_shifted:
            labels = shift_for_causal_lm(labels)
        generator = None
        if self.args.kd_loss == "sampled":
            step, draws = self._kd_draws
            draws = draws + 1 if step == self.state.global_step else 0
            self._kd_draws = (self.state.global_step, draws)
            seed = (
                hash((self.args.seed, self.state.global_step, draws, self.accelerator.process_index)) % 2**63
            )
            generator = torch.Generator(device=labels.device).manual_seed(seed)
        loss, parts = linear_distillation_loss(
            hidden,
            head.weight,
            labels=labels,
            temperature=self.args.temperature,
            alpha=alpha,
            mode=self.args.kd_loss,
            chunk_size=self.args.kd_chunk_size,
            generator=generator,
            student_head_bias=getattr(head, "bias", None),
            num_items_in_batch=num_items_in_batch,
            beta=self.args.beta,
            **teacher_inputs,
        )
        self._check_finite(loss, parts)
        return self._scale_and_record(loss, parts, num_items_in_batch, True, True, has_labels)

    def _check_finite(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> None:
        """Stop before a non-finite loss reaches backward: its gradients would make every weight NaN, and
        Trainer's logging would show the loss as 0 (``logging_nan_inf_filter``)."""
        if bool(torch.isfinite(loss)):
            return
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items() if k in ("ce", "kd"))
        raise StudentOutputError(
            f"The student's loss is {float(loss)} at step {self.state.global_step} ({terms}); the teachers' targets "
            "were finite. Training stopped before this step's update. Common causes: a learning rate too high for "
            "the student, fp16 overflow (try bf16 or fp32), or non-finite inputs in the batch."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self._eval_metrics["count"]:
            count = self.accelerator.gather(torch.stack(self._eval_metrics["count"]).sum().reshape(1)).sum()
            total = self.accelerator.gather(
                torch.stack(self._eval_metrics["divergence_sum"]).sum().reshape(1)
            ).sum()
            logs["eval_kd_divergence"] = round((total / count.clamp(min=1)).item(), 6)
            self._eval_metrics.clear()
        if "loss" in logs and self._metrics["count"]:
            count = self.accelerator.gather(torch.stack(self._metrics["count"]).sum().reshape(1)).sum()
            for key, name in (
                ("ce_sum", "loss_ce"),
                ("kd_sum", "loss_kd"),
                ("divergence_sum", "kd_divergence"),
            ):
                if self._metrics[key]:
                    total = self.accelerator.gather(torch.stack(self._metrics[key]).sum().reshape(1)).sum()
                    logs[name] = round((total / count.clamp(min=1)).item(), 6)
            self._metrics.clear()
        super().log(logs, start_time)

    # ---- lineage -----------------------------------------------------------------------------------

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_name: str | list[str] | None = None,
    ) -> None:
        """Write ``output_dir/README.md``: the student's model card with its teachers' lineage (main process
        only). Arguments as for ``Trainer.create_model_card``; see :func:`hf_ckd.export.build_model_card`."""
        if not self.is_world_process_zero():
            return
        card = build_model_card(
            self,
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
            dataset_name=dataset_name,
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save; a timm student's final model is then rewritten in timm's Hub format as well
        (:func:`hf_ckd.export.export_timm_folder`), so ``timm.create_model("hf-hub:…")`` and
        ``AutoModelForImageClassification`` both load it. ``checkpoint-<step>`` folders keep Trainer's format."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if is_checkpoint_folder(output_dir) or not is_timm_model(model):
            return super().save_model(output_dir, _internal_call=_internal_call)
        super().save_model(output_dir, _internal_call=True)
        if self.args.should_save:
            export_timm_folder(output_dir, model)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)


def _as_distill_config(args: TrainingArguments) -> CheckpointDistillConfig:
    """Plain ``TrainingArguments`` as a :class:`CheckpointDistillConfig` with every KD field at its default, as
    TRL's trainers convert them, with a warning that names those defaults."""
    import dataclasses
    import warnings

    values = args.to_dict()
    values["hub_token"] = args.hub_token  # to_dict() masks it
    values.pop("push_to_hub_token", None)
    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    config = CheckpointDistillConfig(**{k: v for k, v in values.items() if k in names})
    defaults = ", ".join(
        f"{f.name}={getattr(config, f.name)!r}"
        for f in dataclasses.fields(CheckpointDistillConfig)
        if f.name in ("temperature", "alpha", "beta", "teacher_checkpoints", "kd_loss", "ensemble_average")
    )
    warnings.warn(
        f"CheckpointDistillTrainer got plain TrainingArguments: converted to CheckpointDistillConfig with the KD "
        f"defaults ({defaults}; the loss is alpha * CE + (1 - alpha) * temperature^2 * KL). Pass a "
        "CheckpointDistillConfig to choose them.",
        UserWarning,
        stacklevel=3,
    )
    return config


def _teacher_from_model(
    teacher_model, args, teachers, teacher_source, teacher_schedule
) -> TeacherEnsemble | None:
    """``teacher_model=`` as TRL takes it: a model instance (one frozen teacher, its lineage from its
    ``name_or_path``), or a path / ``hub:ORG/NAME`` spec, which becomes ``args.teacher``."""
    if teachers is not None or teacher_source is not None or teacher_schedule is not None:
        raise ValueError(
            "Pass the teachers once: teacher_model= or teachers= / teacher_source= / teacher_schedule=."
        )
    if isinstance(teacher_model, str | os.PathLike):
        if args.teacher and os.fspath(teacher_model) != args.teacher:
            raise ValueError(
                f"teacher_model={os.fspath(teacher_model)!r} and args.teacher={args.teacher!r} name two teachers; "
                "give one of them."
            )
        args.teacher = os.fspath(teacher_model)
        return None
    if not isinstance(teacher_model, nn.Module):
        raise TypeError(
            f"teacher_model must be an nn.Module, a path or a hub:ORG/NAME spec, got {type(teacher_model).__name__}."
        )
    name = getattr(getattr(teacher_model, "config", None), "name_or_path", "") or ""
    checkpoint = Checkpoint(
        name=os.path.basename(os.path.normpath(name)) if name else type(teacher_model).__name__,
        path=name if os.path.isdir(name) else "",
        step=0,
        source=name or type(teacher_model).__name__,
    )
    return TeacherEnsemble([teacher_model.eval().requires_grad_(False)], [checkpoint])

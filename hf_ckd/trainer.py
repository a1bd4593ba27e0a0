"""``CheckpointDistillTrainer``: a ``transformers.Trainer`` whose loss distils teacher checkpoints."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer_callback import ExportableState

from .cache import (
    CACHE_KEYS,
    CachedTeachers,
    CacheError,
    ReplayViewCallback,
    ReplayViews,
    SoftTargetCache,
    collate_with_cache_keys,
    run_fingerprint,
)
from .config import CheckpointDistillConfig
from .export import build_model_card, export_timm_folder, is_checkpoint_folder, is_timm_student
from .hub import fetch_checkpoint, teacher_trajectory
from .losses import ensemble_kd_loss, linear_distillation_loss, shift_for_causal_lm
from .scheduled import ScheduledTeachers, TeacherScheduleCallback
from .schedules import TeacherSchedule, schedule_from_args
from .selection import teacher_spec
from .teachers import (
    TeacherEnsemble,
    TeacherLoadError,
    TeacherModelInit,
    load_teacher,
    model_logits,
    output_size,
)

LABEL_KEYS = ("labels", "shift_labels")
NON_STUDENT_INPUTS = (*LABEL_KEYS, *CACHE_KEYS)


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

    With ``args.soft_target_cache`` no teacher is loaded: the targets are read from the cache, whose
    fingerprint must match the run (teachers' files, weights, temperature, and ``train_dataset``, a
    :class:`hf_ckd.cache.ReplayViews`). With ``args.kd_loss`` ``chunked``/``sampled``, causal-LM students are
    distilled from hidden states and LM heads (:func:`hf_ckd.losses.linear_distillation_loss`) without the
    ``[tokens, vocabulary]`` logits.

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
        teacher_schedule: TeacherSchedule | None = None,
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
        self.soft_targets: SoftTargetCache | None = None
        if args.soft_target_cache is not None:
            if teachers is not None or teacher_schedule is not None:
                raise ValueError(
                    "soft_target_cache replaces the teachers: do not pass teachers= or teacher_schedule=."
                )
            self.soft_targets, teachers = self._open_soft_target_cache(args, train_dataset)
        teacher_schedule = self._resolve_schedule(args, teachers, teacher_schedule)
        if teachers is None and teacher_schedule is None:
            if not args.teacher:
                raise ValueError(
                    "No teacher: set CheckpointDistillConfig(teacher='path/to/teacher/output_dir') or pass teachers=."
                )
            trajectory = teacher_trajectory(args)
            teachers = TeacherEnsemble.from_trajectory(
                trajectory,
                teacher_spec(args, trajectory),
                args.teacher_weights,
                args.ensemble_average,
                model_init=teacher_model_init,
                dtype=args.teacher_dtype,
                trust_remote_code=args.teacher_trust_remote_code,
                allow_unsafe_pickle=args.teacher_allow_unsafe_pickle,
                fusion=args.teacher_fusion,
            )
        elif teachers is not None and args.teacher_dtype is not None and self.soft_targets is None:
            teachers.to(dtype=args.teacher_dtype)
        self.teacher_schedule = teacher_schedule
        self._scheduled = self._scheduled_teachers(args, teacher_model_init)
        self.teachers = teachers if self._scheduled is None else self._scheduled.ensemble
        if model is not None:
            self._check_label_space(model)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.lineage = self._lineage(args)
        output_dir_existed = args.output_dir is not None and os.path.exists(args.output_dir)
        callbacks = [*(callbacks or []), TeacherLineageCallback(self.lineage)]
        if isinstance(
            train_dataset, ReplayViews
        ):  # view = epoch mod views, the view the targets were cached for
            callbacks.append(ReplayViewCallback(train_dataset))
            if data_collator is not None:
                data_collator = collate_with_cache_keys(data_collator)
        self._schedule_callback = None
        if (
            self._scheduled is not None
        ):  # lazy teachers: the callback loads the active set and saves its state
            self._schedule_callback = TeacherScheduleCallback().bind(self, self._scheduled)
            callbacks.append(self._schedule_callback)
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
        self._linear_kd = args.kd_loss != "full" and self._shift_labels
        if self._linear_kd:
            self._check_linear_kd(self.accelerator.unwrap_model(self.model))
        if self.soft_targets is not None and self.soft_targets.token_level and args.kd_loss != "sampled":
            raise CacheError(
                f"Soft-target cache '{args.soft_target_cache}' holds teacher draws per position (storage='sampled' "
                f"over a causal LM's tokens); train with kd_loss='sampled' (got kd_loss={args.kd_loss!r})."
            )
        self._kd_draws = (-1, 0)  # (global step, draws made at it): seeds kd_loss='sampled' reproducibly
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

    def _open_soft_target_cache(self, args: CheckpointDistillConfig, train_dataset) -> tuple:
        """Open the cache and check it was built for this run; returns it and the teachers' description."""
        if not args.teacher:
            raise ValueError(
                "soft_target_cache needs teacher= too: the fingerprint is checked against its files."
            )
        if not isinstance(train_dataset, ReplayViews):
            raise CacheError(
                "soft_target_cache needs train_dataset=hf_ckd.cache.ReplayViews(dataset, transform, views, seed), "
                f"the one the cache was built with (got {type(train_dataset).__name__}): the targets are looked up "
                "by example index and view."
            )
        cache = SoftTargetCache(args.soft_target_cache)
        trajectory = teacher_trajectory(args)
        checkpoints, weights = TeacherEnsemble.merge_duplicates(
            trajectory.select(teacher_spec(args, trajectory)), args.teacher_weights
        )
        checkpoints = [fetch_checkpoint(c) for c in checkpoints]  # the fingerprint hashes their weight files
        expected = run_fingerprint(
            checkpoints, weights, args.ensemble_average, args.temperature, train_dataset
        )
        cache.check(
            expected,
            rebuild_hint=f"hf_ckd.cache.build_soft_target_cache(teachers, dataset, {args.soft_target_cache!r}, "
            f"temperature={args.temperature}, views={train_dataset.views}, seed={train_dataset.seed}, "
            "transform=..., overwrite=True)",
        )
        return cache, CachedTeachers(checkpoints, weights, args.ensemble_average, cache.num_classes)

    def _check_linear_kd(self, model: nn.Module) -> None:
        import inspect

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
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
        self._signature_columns += [k for k in CACHE_KEYS if k not in self._signature_columns]

    def _place_teachers(self) -> None:
        """Move teachers to the accelerator's device: prepared for autocast, never wrapped in DDP."""
        for i, teacher in enumerate(self.teachers.models):
            self.teachers.models[i] = self._place_teacher(teacher)

    def _place_teacher(self, teacher: nn.Module) -> nn.Module:
        accelerator = self.accelerator
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            # Kept whole on every rank (not sharded): fine for teachers that fit one device.
            return teacher.to(accelerator.device)
        return accelerator.prepare_model(teacher, evaluation_mode=True)

    def _lineage(self, args: CheckpointDistillConfig) -> dict[str, Any]:
        given = not args.teacher  # a ready TeacherEnsemble was passed: the config's spec was not used
        names = ",".join(c.name for c in self.teachers.checkpoints)
        if self.teacher_schedule is not None:
            names = ",".join(c.name for c in self.teacher_schedule.checkpoints)
        lineage = {
            "teacher": self.teachers.checkpoints[0].source if given else args.teacher,
            "teacher_checkpoints": names if given else args.teacher_checkpoints,
            "teacher_selection": args.teacher_selection,
            **self.teachers.describe(),
            "temperature": args.temperature,
            "alpha": args.alpha,
        }
        if self.teacher_schedule is not None:  # every scheduled checkpoint, weighted by its share of the run
            lineage.update(self._schedule_lineage(args.max_steps))
        return lineage

    # ---- teacher schedule (lazy teachers) ----------------------------------------------------------

    def _resolve_schedule(
        self,
        args: CheckpointDistillConfig,
        teachers: TeacherEnsemble | None,
        schedule: TeacherSchedule | None,
    ) -> TeacherSchedule | None:
        """The schedule this run follows; ``None`` keeps the static, eagerly loaded teachers."""
        if teachers is not None and (schedule is not None or args.teacher_schedule != "static"):
            raise ValueError(
                "teachers= is a ready, static ensemble, but this run has a teacher schedule "
                f"(teacher_schedule={schedule if schedule is not None else args.teacher_schedule!r}), whose "
                "checkpoints are loaded lazily. Pass teacher_schedule= (or args.teacher) instead of teachers=."
            )
        if (
            schedule is not None
            or teachers is not None
            or args.teacher_schedule == "static"
            or not args.teacher
        ):
            return schedule
        trajectory = teacher_trajectory(args)
        return schedule_from_args(args, trajectory.select(teacher_spec(args, trajectory)))

    def _scheduled_teachers(
        self, args: CheckpointDistillConfig, teacher_model_init: TeacherModelInit | None
    ) -> ScheduledTeachers | None:
        """Check every scheduled checkpoint's files; load only the set active at step 0 (for the label-space
        check; the callback swaps in the set of the step training starts or resumes at)."""
        if self.teacher_schedule is None:
            return None

        def load(checkpoint):
            return load_teacher(
                checkpoint,
                model_init=teacher_model_init,
                dtype=args.teacher_dtype,
                trust_remote_code=args.teacher_trust_remote_code,
                allow_unsafe_pickle=args.teacher_allow_unsafe_pickle,
            )

        scheduled = ScheduledTeachers(
            self.teacher_schedule, load, args.ensemble_average, needs_config=teacher_model_init is None
        )
        scheduled.switch(self.teacher_schedule.active(0, max(args.max_steps, 1)))
        return scheduled

    def _release_teacher(self, teacher: nn.Module) -> None:
        """Forget a teacher the schedule left behind (accelerate keeps every prepared model in a list)."""
        models = getattr(self.accelerator, "_models", None)
        if isinstance(models, list):
            models[:] = [m for m in models if m is not teacher]

    def _teachers_switched(self, ensemble: TeacherEnsemble) -> None:
        self.teachers = ensemble
        self._check_label_space(self.accelerator.unwrap_model(self.model))
        if self.lineage.get("schedule", {}).get("max_steps") != self.state.max_steps:
            self.lineage.update(self._schedule_lineage(self.state.max_steps))

    def _schedule_lineage(self, max_steps: int) -> dict[str, Any]:
        """Every scheduled checkpoint with its share of the student's steps as ``weight`` (uniform until the
        run's length is known), and the schedule with its segments."""
        schedule = self.teacher_schedule
        count = len(schedule.checkpoints)
        shares = (
            schedule.shares(max_steps) if max_steps > 0 else {c.name: 1 / count for c in schedule.checkpoints}
        )
        return {
            "checkpoints": [
                {**c.describe(), "weight": round(shares[c.name], 6)} for c in schedule.checkpoints
            ],
            "schedule": schedule.describe(max_steps if max_steps > 0 else None),
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
        alpha = self.args.alpha if training else 1.0  # evaluation scores the student alone
        if training and self._linear_kd and alpha < 1 and labels is not None:
            return self._compute_linear_kd_loss(model, inputs, labels, pre_shifted, alpha, num_items_in_batch)
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
        if needs_teachers and self._schedule_callback is not None:
            self._schedule_callback.sync(self.state)  # a no-op unless the schedule switches at this step
        log_target = None
        if needs_teachers and self.soft_targets is not None:
            log_target = self.soft_targets.log_targets(*self._cache_keys(inputs))
            log_target = log_target.to(student_logits.device)
        teacher_logits = (
            self.teachers.logits(inputs, step=self.state.global_step)
            if needs_teachers and log_target is None
            else []
        )
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
            log_target=log_target,
        )
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
            if has_labels:
                self._metrics["ce_sum"].append(parts["ce"] * denom)
        return loss

    @staticmethod
    def _cache_keys(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "cache_index" not in inputs:
            raise CacheError(
                "The batch has no cache_index/cache_view: train on the ReplayViews the cache was built with, "
                "and let the trainer wrap your data_collator (or use hf_ckd.cache.collate_with_cache_keys)."
            )
        return inputs["cache_index"].cpu(), inputs["cache_view"].cpu()

    def _compute_linear_kd_loss(self, model, inputs, labels, pre_shifted, alpha, num_items_in_batch):
        """Token-level KD from the last hidden states and LM heads (``kd_loss`` chunked/sampled): neither the
        student nor the teachers materialise ``[tokens, vocabulary]`` logits (``logits_to_keep=1``)."""
        if self._schedule_callback is not None:
            self._schedule_callback.sync(self.state)
        student_inputs = {k: v for k, v in inputs.items() if k not in NON_STUDENT_INPUTS}
        outputs = model(**student_inputs, output_hidden_states=True, logits_to_keep=1)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        teacher_inputs: dict[str, Any] = {}
        if self.soft_targets is not None:  # the teachers' draws per position, read from the cache
            hidden = outputs.hidden_states[-1]
            index, view = self._cache_keys(inputs)
            samples = self.soft_targets.token_samples(
                index, view, inputs.get("attention_mask"), hidden.shape[1]
            )
            teacher_inputs = {
                "teacher_hidden": None,
                "teacher_head_weight": None,
                "teacher_samples": tuple(t.to(hidden.device) for t in samples[:4]),
                "teacher_entropy": samples.entropy.to(hidden.device),
            }
        else:
            teacher_hidden, teacher_heads, teacher_biases = self.teachers.hidden_states(inputs)
            teacher_inputs = {
                "teacher_hidden": teacher_hidden,
                "teacher_head_weight": teacher_heads,
                "teacher_head_bias": teacher_biases if any(b is not None for b in teacher_biases) else None,
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
            outputs.hidden_states[-1],
            head.weight,
            labels=labels,
            temperature=self.args.temperature,
            alpha=alpha,
            mode=self.args.kd_loss,
            chunk_size=self.args.kd_chunk_size,
            num_samples=self.soft_targets.num_uniform
            if self.soft_targets is not None
            else self.args.kd_num_samples,
            generator=generator,
            student_head_bias=getattr(head, "bias", None),
            weights=self.teachers.weights,
            average=self.teachers.average,
            num_items_in_batch=num_items_in_batch,
            **teacher_inputs,
        )
        return self._scale_and_record(loss, parts, num_items_in_batch, True, True, True)

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
        if is_checkpoint_folder(output_dir) or not is_timm_student(model):
            return super().save_model(output_dir, _internal_call=_internal_call)
        super().save_model(output_dir, _internal_call=True)
        if self.args.should_save:
            export_timm_folder(output_dir, model)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

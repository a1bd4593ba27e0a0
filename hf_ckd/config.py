"""``CheckpointDistillConfig``: ``TrainingArguments`` plus the teacher trajectory and the KD loss."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ._options import (
    AVERAGE_MODES,
    FUSION_MODES,
    KD_LOSS_MODES,
    PACES,
    SCHEDULE_KINDS,
    TEACHER_DTYPES,
    OptionError,
    check_alpha,
    check_beta,
    check_boundaries,
    check_choice,
    check_int,
    check_positive,
    check_temperature,
    normalize_weights,
    parse_floats,
)


@dataclass
class CheckpointDistillConfig(TrainingArguments):
    r"""
    Configuration class for [`CheckpointDistillTrainer`]: every `transformers.TrainingArguments` field plus
    the ones below. One class is the Python API, the `--help` text of the recipes (through
    `HfArgumentParser`) and the docs.

    Parameters:
        > Parameters that control the teachers

        teacher (`str` or `None`, *optional*, defaults to `None`):
            Where the teacher trajectory lives: the `output_dir` of a `transformers.Trainer` run (it holds
            `checkpoint-<step>/` folders), a single saved model folder, or a Hub repo written
            `hub:ORG/NAME` or `hub:ORG/NAME@PATTERN` (one branch or tag per checkpoint, such as `step1000`,
            or `checkpoint-<step>/` subfolders; PATTERN is a glob over their names, such as `step*`), or, as
            TRL takes it, a Hub model id without the prefix (`gpt2`, `ORG/NAME`) when no local path has that
            name (its layout detected; a warning says which). Required unless the trainer is given `teachers=`
            or `teacher_model=` directly.
        teacher_revision (`str`, *optional*, defaults to `"main"`):
            For a Hub teacher: the revision whose `checkpoint-<step>/` subfolders (or root model) are read.
            Branch-per-checkpoint repos ignore it. A private repo is read with `hub_token` (or the logged-in
            token).
        teacher_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Hub cache folder for Hub teachers (`None`: `HF_HUB_CACHE`). With `HF_HUB_OFFLINE=1` the trajectory
            is read from this cache only.
        teacher_checkpoints (`str`, *optional*, defaults to `"last"`):
            Which checkpoints teach, comma-separated: fractions of training in [0, 1] (`0.5` is the checkpoint
            nearest the middle of the run, the paper's T^0.5), `last`, `first`, `all`, checkpoint names
            (`checkpoint-500`) or `step:500`. Several items make a snapshot ensemble.
        teacher_selection (`str` or `None`, *optional*, defaults to `None`):
            A `selection.json` written by `hf-ckd select_teachers`: its selected checkpoint(s) teach,
            replacing `teacher_checkpoints`. Refused when it names checkpoints the trajectory does not have.
        teacher_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            One non-negative ensemble weight per selected checkpoint (rescaled to sum to 1). `None` is a
            uniform ensemble.
        ensemble_average (`str`, *optional*, defaults to `"probs"`):
            How the checkpoints' outputs combine: `probs` averages tempered probabilities (the paper's
            formula), `logits` averages logits and then softens them (the official CheckpointKD code).
        teacher_dtype (`str` or `None`, *optional*, defaults to `None`):
            Precision of the teachers: `bf16`, `fp16` or `fp32`. `None` loads them in fp32.
        teacher_trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow custom modelling code shipped with the teacher checkpoints. Only for authors you trust.
        teacher_allow_unsafe_pickle (`bool`, *optional*, defaults to `False`):
            Allow pickle weight files that `torch.load(weights_only=True)` refuses; unpickling can run
            arbitrary code. Only for files you trust.

        > Parameters that control the teacher schedule

        teacher_schedule (`str`, *optional*, defaults to `"static"`):
            How the checkpoints selected by `teacher_checkpoints` teach over the run: `static` (all of them
            for the whole run, a snapshot ensemble when several), `progressive` (one after the other in
            trajectory order, ending on the last; select at least 2, e.g. `all`) or `anchors` (RCO: anchor
            checkpoints one after the other, each for an equal share). Progressive and anchor runs keep only
            the active checkpoint in memory.
        teacher_schedule_pace (`str` or `None`, *optional*, defaults to `None`):
            How a progressive or anchor schedule shares out the run: `teacher_time` (after s student steps,
            the first checkpoint whose step is >= (s + 1) * time scale teaches, so the student meets the
            checkpoints at the pace the teacher reached them) or `equal` shares. `None`: `teacher_time` for
            progressive, `equal` for anchors.
        teacher_schedule_boundaries (`list[float]` or `None`, *optional*, defaults to `None`):
            Instead of a pace: fractions of the student's run, strictly increasing in (0, 1), one fewer than
            the scheduled checkpoints; checkpoint i teaches until boundary i (e.g. `0.1` for a 2-shot schedule
            whose first checkpoint teaches the first tenth of the run).
        teacher_schedule_time_scale (`float` or `None`, *optional*, defaults to `None`):
            Teacher steps per student step for the `teacher_time` pace. `None` spreads the checkpoints over
            the whole run (last checkpoint's step / max_steps); `1` follows the teacher's own pace, after
            which the last checkpoint teaches to the end.
        teacher_num_anchors (`int` or `None`, *optional*, defaults to `None`):
            For `anchors`: how many anchors to take at equal intervals along the checkpoints of
            `teacher_checkpoints` (the last checkpoint is always one). `None` makes every selected checkpoint
            an anchor.

        > Parameters that control the loss

        temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature tau > 0 of the distillation term; the KD term is scaled by tau^2.
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the hard-label cross-entropy, in [0, 1]: loss = alpha * CE + (1 - alpha) * tau^2 * KL.
            `1` is plain training, `0` pure distillation (no labels needed).
        beta (`float`, *optional*, defaults to `0.0`):
            The divergence of the KD term, TRL's `beta` (generalized Jensen-Shannon, arXiv:2306.13649): `0`
            forward KL(P_T || p_S) (Hinton's KD, mass-covering), `1` reverse KL(p_S || P_T) (mode-seeking, TRL's
            `DistillationTrainer` default), in between beta * KL(P_T || M) + (1 - beta) * KL(p_S || M) with
            M = beta * P_T + (1 - beta) * p_S. Taken against the ensemble target (`ensemble_average`). `kd_loss`
            `full` and `chunked` only (`sampled` estimates forward KL).
        kd_loss (`str`, *optional*, defaults to `"full"`):
            How token-level KD of causal LMs is computed: `full` (from the logits), `chunked` (exact, from the
            last hidden states and the LM heads, positions in chunks of `kd_chunk_size`, never holding the
            [tokens, vocabulary] logits) or `sampled` (an estimate from `kd_num_samples` vocabulary ids per
            position; see docs/large_vocab.md). Other students must use `full` (`chunked` and `sampled` refuse them).
        kd_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Positions per chunk for `kd_loss` `chunked` and `sampled`. `None` sizes the chunks from the student's
            LM head [V, H]: clamp(max(2^22 // V, H), 16, 1024) positions, one [chunk, V] float32 buffer of at most
            16 MiB or the head's own size (1024 positions up to V = 4,096; at V = 32,768, 128 for H <= 128 and H
            above; see docs/large_vocab.md). An integer >= 1 fixes it (1024 was the default).
        kd_num_samples (`int` or `None`, *optional*, defaults to `None`):
            Vocabulary ids sampled per position for `kd_loss=sampled` (e.g. 2 percent of the vocabulary): two
            thirds from the teacher (its most likely ids and draws from the rest), one third uniform ids. With a
            token-level `soft_target_cache` the samples come from the cache and this is not needed.

        > Parameters that control the teachers' cost

        teacher_fusion (`str`, *optional*, defaults to `"loop"`):
            How several teacher checkpoints run: `loop` (one forward each), `vmap` (one fused forward over
            their stacked weights; same architecture only, a second copy of the weights) or `auto` (times
            both on the first batch and keeps the faster).
        soft_target_cache (`str` or `None`, *optional*, defaults to `None`):
            A soft-target cache built by `hf_ckd.cache.build_soft_target_cache` for these teachers, this
            temperature and this training data: the targets are read from it and no teacher is loaded. The
            train dataset must be the `hf_ckd.cache.ReplayViews` the cache was built with.
        eval_kd_divergence (`bool`, *optional*, defaults to `False`):
            Also measure the KD divergence (the `beta` divergence at `temperature`, without tau^2: TRL's number)
            on the eval set, logged as `eval_kd_divergence` beside `eval_loss` (the student's cross-entropy).
            Runs the teachers on every eval batch; not with `soft_target_cache` (it holds training targets).
    """

    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Where the teacher trajectory lives: the output_dir of a transformers.Trainer run (it holds "
            "checkpoint-<step>/ folders), a single saved model folder, or a Hub repo written hub:ORG/NAME or "
            "hub:ORG/NAME@PATTERN (one branch or tag per checkpoint, such as step1000, or checkpoint-<step>/ "
            "subfolders; PATTERN is a glob over their names, such as step*), or, as TRL takes it, a Hub model "
            "id without the prefix (gpt2, ORG/NAME) when no local path has that"
        },
    )
    teacher_revision: str = field(
        default="main",
        metadata={
            "help": "For a Hub teacher: the revision whose checkpoint-<step>/ subfolders (or root model) are read. "
            "Branch-per-checkpoint repos ignore it. A private repo is read with hub_token (or the logged-in token)."
        },
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Hub cache folder for Hub teachers (None: HF_HUB_CACHE). With HF_HUB_OFFLINE=1 the trajectory "
            "is read from this cache only."
        },
    )
    teacher_checkpoints: str = field(
        default="last",
        metadata={
            "help": "Which checkpoints teach, comma-separated: fractions of training in [0, 1] (0.5 is the "
            "checkpoint nearest the middle of the run, the paper's T^0.5), last, first, all, checkpoint names "
            "(checkpoint-500) or step:500. Several items make a snapshot ensemble."
        },
    )
    teacher_selection: str | None = field(
        default=None,
        metadata={
            "help": "A selection.json written by hf-ckd select_teachers: its selected checkpoint(s) teach, "
            "replacing teacher_checkpoints. Refused when it names checkpoints the trajectory does not have."
        },
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "One non-negative ensemble weight per selected checkpoint (rescaled to sum to 1). None is a "
            "uniform ensemble."
        },
    )
    ensemble_average: str = field(
        default="probs",
        metadata={
            "help": "How the checkpoints' outputs combine: probs averages tempered probabilities (the paper's "
            "formula), logits averages logits and then softens them (the official CheckpointKD code).",
            "choices": list(AVERAGE_MODES),
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Precision of the teachers: bf16, fp16 or fp32. None loads them in fp32.",
            "choices": ["bf16", "fp16", "fp32"],
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow custom modelling code shipped with the teacher checkpoints. Only for authors you trust."
        },
    )
    teacher_allow_unsafe_pickle: bool = field(
        default=False,
        metadata={
            "help": "Allow pickle weight files that torch.load(weights_only=True) refuses; unpickling can run "
            "arbitrary code. Only for files you trust."
        },
    )
    teacher_schedule: str = field(
        default="static",
        metadata={
            "help": "How the checkpoints selected by teacher_checkpoints teach over the run: static (all of them "
            "for the whole run, a snapshot ensemble when several), progressive (one after the other in "
            "trajectory order, ending on the last; select at least 2, e.g. all) or anchors (RCO: anchor "
            "checkpoints one after the other, each for an equal share). Progressive and anchor runs keep "
            "only the active checkpoint in memory.",
            "choices": list(SCHEDULE_KINDS),
        },
    )
    teacher_schedule_pace: str | None = field(
        default=None,
        metadata={
            "help": "How a progressive or anchor schedule shares out the run: teacher_time (after s student steps, "
            "the first checkpoint whose step is >= (s + 1) * time scale teaches, so the student meets the "
            "checkpoints at the pace the teacher reached them) or equal shares. None: teacher_time for "
            "progressive, equal for anchors.",
            "choices": list(PACES),
        },
    )
    teacher_schedule_boundaries: list[float] | None = field(
        default=None,
        metadata={
            "help": "Instead of a pace: fractions of the student's run, strictly increasing in (0, 1), one fewer "
            "than the scheduled checkpoints; checkpoint i teaches until boundary i (e.g. 0.1 for a 2-shot "
            "schedule whose first checkpoint teaches the first tenth of the run).",
        },
    )
    teacher_schedule_time_scale: float | None = field(
        default=None,
        metadata={
            "help": "Teacher steps per student step for the teacher_time pace. None spreads the checkpoints over "
            "the whole run (last checkpoint's step / max_steps); 1 follows the teacher's own pace, after "
            "which the last checkpoint teaches to the end.",
        },
    )
    teacher_num_anchors: int | None = field(
        default=None,
        metadata={
            "help": "For anchors: how many anchors to take at equal intervals along the checkpoints of "
            "teacher_checkpoints (the last checkpoint is always one). None makes every selected "
            "checkpoint an anchor.",
        },
    )
    temperature: float = field(
        default=4.0,
        metadata={
            "help": "Softmax temperature tau > 0 of the distillation term; the KD term is scaled by tau^2."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the hard-label cross-entropy, in [0, 1]: loss = alpha * CE + (1 - alpha) * tau^2 * KL. "
            "1 is plain training, 0 pure distillation (no labels needed)."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "The divergence of the KD term, TRL's beta (generalized Jensen-Shannon, arXiv:2306.13649): 0 "
            "forward KL(P_T || p_S) (Hinton's KD, mass-covering), 1 reverse KL(p_S || P_T) (mode-seeking, TRL's "
            "DistillationTrainer default), in between beta * KL(P_T || M) + (1 - beta) * KL(p_S || M) with M = "
            "beta * P_T + (1 - beta) * p_S. Taken against the ensemble target (ensemble_average). kd_loss full "
            "and chunked only (sampled estimates forward KL)."
        },
    )
    kd_loss: str = field(
        default="full",
        metadata={
            "help": "How token-level KD of causal LMs is computed: full (from the logits), chunked (exact, from the "
            "last hidden states and the LM heads, positions in chunks of kd_chunk_size, never holding the "
            "[tokens, vocabulary] logits) or sampled (an estimate from kd_num_samples vocabulary ids per "
            "position; see docs/large_vocab.md). Other students must use full (chunked and sampled refuse them)."
        },
    )
    kd_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Positions per chunk for kd_loss chunked and sampled. None sizes the chunks from the student's "
            "LM head [V, H]: clamp(max(2^22 // V, H), 16, 1024) positions, one [chunk, V] float32 buffer of at most "
            "16 MiB or the head's own size (1024 positions up to V = 4,096; at V = 32,768, 128 for H <= 128 and H "
            "above; see docs/large_vocab.md). An integer >= 1 fixes it (1024 was the default)."
        },
    )
    kd_num_samples: int | None = field(
        default=None,
        metadata={
            "help": "Vocabulary ids sampled per position for kd_loss=sampled (e.g. 2 percent of the vocabulary): "
            "two thirds from the teacher (its most likely ids and draws from the rest), one third uniform ids. With "
            "a token-level soft_target_cache the samples come from the cache and this is not needed."
        },
    )
    teacher_fusion: str = field(
        default="loop",
        metadata={
            "help": "How several teacher checkpoints run: loop (one forward each), vmap (one fused forward over "
            "their stacked weights; same architecture only, a second copy of the weights) or auto (times both "
            "on the first batch and keeps the faster)."
        },
    )
    soft_target_cache: str | None = field(
        default=None,
        metadata={
            "help": "A soft-target cache built by hf_ckd.cache.build_soft_target_cache for these teachers, this "
            "temperature and this training data: the targets are read from it and no teacher is loaded. The "
            "train dataset must be the hf_ckd.cache.ReplayViews the cache was built with."
        },
    )
    eval_kd_divergence: bool = field(
        default=False,
        metadata={
            "help": "Also measure the KD divergence (the beta divergence at temperature, without tau^2: TRL's number) "
            "on the eval set, logged as eval_kd_divergence beside eval_loss (the student's cross-entropy). Runs "
            "the teachers on every eval batch; not with soft_target_cache (it holds training targets)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        # The one place a run's settings are judged (with the validators the losses and schedules share), so
        # a bad value fails here, naming the field, before anything is loaded or written.
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        check_beta(self.beta)
        check_choice(self.ensemble_average, AVERAGE_MODES, "ensemble_average")
        if self.teacher_dtype is not None:
            check_choice(self.teacher_dtype, tuple(TEACHER_DTYPES), "teacher_dtype")
        self.teacher_weights = parse_floats(self.teacher_weights, "teacher_weights")
        if self.teacher_weights is not None:
            normalize_weights(self.teacher_weights, name="teacher_weights")
        if not str(self.teacher_checkpoints).strip():
            raise OptionError(
                "teacher_checkpoints is empty; use e.g. 'last', '0.5' or '0.3,0.5,0.7'.",
                "teacher_checkpoints",
            )
        self._check_schedule()
        check_choice(self.kd_loss, KD_LOSS_MODES, "kd_loss")
        if self.kd_chunk_size is not None:
            check_int(self.kd_chunk_size, 1, "kd_chunk_size")
        needs_samples = self.kd_loss == "sampled" and self.soft_target_cache is None
        if (needs_samples or self.kd_num_samples is not None) and (
            self.kd_num_samples is None or self.kd_num_samples < 1
        ):
            raise OptionError(
                f"kd_loss='sampled' needs kd_num_samples >= 1 (ids drawn per position), got {self.kd_num_samples!r}.",
                "kd_num_samples",
            )
        if self.kd_loss == "sampled" and self.beta != 0:
            raise OptionError(
                f"kd_loss='sampled' estimates the forward KL (beta=0) only; beta={self.beta} (reverse KL / "
                "generalized JSD) needs the student's whole distribution: use kd_loss='chunked' (exact, as lean).",
                "beta",
            )
        check_choice(self.teacher_fusion, FUSION_MODES, "teacher_fusion")
        if self.soft_target_cache is not None and self.teacher_schedule != "static":
            raise OptionError(
                "soft_target_cache holds the targets of one static ensemble; it cannot follow "
                f"teacher_schedule={self.teacher_schedule!r}. Drop one of the two.",
                "soft_target_cache",
            )
        if self.eval_kd_divergence and self.soft_target_cache is not None:
            raise OptionError(
                "eval_kd_divergence needs the teachers on the eval batches, but soft_target_cache holds the "
                "training targets only and no teacher is loaded. Drop one of the two.",
                "eval_kd_divergence",
            )
        if self.label_smoothing_factor != 0:
            raise OptionError(
                "label_smoothing_factor is not supported by CheckpointDistillConfig: the distillation term already "
                "softens the targets. Set it to 0.",
                "label_smoothing_factor",
            )

    def _check_schedule(self) -> None:
        """The schedule fields alone and together; what needs the checkpoints (how many, their order) is
        checked when the schedule is built over them."""
        kind = check_choice(self.teacher_schedule, SCHEDULE_KINDS, "teacher_schedule")
        self.teacher_schedule_boundaries = check_boundaries(
            self.teacher_schedule_boundaries, "teacher_schedule_boundaries"
        )
        pace, boundaries = self.teacher_schedule_pace, self.teacher_schedule_boundaries
        scale, anchors = self.teacher_schedule_time_scale, self.teacher_num_anchors
        if pace is not None:
            check_choice(pace, PACES, "teacher_schedule_pace")
        if scale is not None:
            check_positive(scale, "teacher_schedule_time_scale")
        if anchors is not None:
            check_int(anchors, 2, "teacher_num_anchors")
        given = {
            "teacher_schedule_pace": pace,
            "teacher_schedule_boundaries": boundaries,
            "teacher_schedule_time_scale": scale,
            "teacher_num_anchors": anchors,
        }
        if kind == "static":
            extra = [name for name, value in given.items() if value is not None]
            if extra:
                raise OptionError(
                    f"{', '.join(extra)} appl{'ies' if len(extra) == 1 else 'y'} to teacher_schedule='progressive' "
                    "or 'anchors'; this run has teacher_schedule='static'.",
                    extra[0],
                )
            return
        if kind == "progressive" and anchors is not None:
            raise OptionError(
                "teacher_num_anchors applies to teacher_schedule='anchors'; this run has 'progressive'.",
                "teacher_num_anchors",
            )
        if self.teacher_weights is not None:
            raise OptionError(
                f"teacher_weights applies to teacher_schedule='static' (an ensemble); a {kind} schedule has one "
                "checkpoint teaching at a time. Drop teacher_weights.",
                "teacher_weights",
            )
        if pace is not None and boundaries is not None:
            raise OptionError(
                "Give either teacher_schedule_pace or teacher_schedule_boundaries, not both.",
                "teacher_schedule_boundaries",
            )
        default_pace = "teacher_time" if kind == "progressive" else "equal"
        if scale is not None and (boundaries is not None or (pace or default_pace) != "teacher_time"):
            raise OptionError(
                "teacher_schedule_time_scale applies to teacher_schedule_pace='teacher_time' only.",
                "teacher_schedule_time_scale",
            )

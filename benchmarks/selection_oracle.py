#!/usr/bin/env python
"""The oracle for teacher selection: which checkpoint of a trajectory teaches best, and which selector finds it.

Wang et al. 2022 (arXiv:2210.06458) pick the checkpoint maximising I(X;F) + I(Y;F). Whether a pick is any good
can only be measured: distil a student from *every* checkpoint (paired seeds: the same student initialisation
and batches for every checkpoint of a teacher) and see which one teaches best. Per task this script

1. trains the teacher trajectories;
2. distils ``student_seeds`` students from every checkpoint and records each one's quality;
3. scores every checkpoint with every selector (estimators on the same probe set and the same features);
4. reports, per selector: its pick on each teacher, Spearman's rank correlation between its score and the
   measured mean student quality over the checkpoints (mean over teachers), and the regret: quality of the
   best checkpoint (the oracle: the best mean over the seeds) minus quality of the pick, paired run for run,
   mean ± standard error over all (teacher, student seed) pairs. Also the verdict the selector gives itself
   (``hf_ckd.stability.verdict``). The oracle is chosen on the same runs it is measured on, so the regret of
   every other pick is biased up by the winner's curse; a regret within 2 SE is seed noise.

Selectors: ``kde`` (sigma = 0.5 x median distance; both terms, and each term alone), ``kde swept`` (the mean over
sigma ∈ {0.25, 0.5, 1, 2} of the normalised score), ``probe`` (I(Y;F)), ``reconstruction`` (I(X;F)), ``infopro``
(reconstruction I(X;F) + probe I(Y;F), each normalised, as Algorithm 1 sums them; computed from the same two
estimates), ``variational`` (the teacher's own cross-entropy), and the baselines: the last checkpoint, the
checkpoint at 0.5 of training, the checkpoint with the best teacher accuracy (the accuracy the trajectory
logs, on the split the students are evaluated on: a generous baseline).

Tasks (``--tasks``):

- ``digits``: the digits demo (``experiments/demo_digits.py``): its CNN teachers (600 steps, a checkpoint every
  60), data and MLP students (20 epochs, τ = 4, alpha = 0.5) through the demo's own functions. Quality: student
  test accuracy. Probe: the training split (as the demo's T* arm).
- ``parity``: the sparse-parity sandbox (``experiments/sparse_parity.py``), reduced to fit a CPU budget:
  (40, 3)-sparse parity, teacher width 256 trained 3,200 steps with a checkpoint every 200 (the loss plateau
  ends around step 1,800 and the teacher reaches 100% held-out accuracy by 2,400), student width 50, one-shot
  pure KD (alpha = 0, tau = 1) from the checkpoint for 4,000 steps. Quality: the mean held-out accuracy over
  the run (evaluated every 200 steps on 2,048 fixed examples; the area under the learning curve, so learning
  sooner counts). Probe: 2,048 fresh examples.

The student runs are the cost (about 3 s of CPU each on digits, 7 s on parity); ``--students_from`` re-scores
the selectors against the students of an earlier run, e.g. after adding or changing an estimator.

Usage:

    HF_HUB_OFFLINE=1 python benchmarks/selection_oracle.py --json benchmarks/selection_oracle.json \\
        --figure_dir benchmarks/figures --workdir runs/selection_oracle  # both tasks, ~35 min on 2 shared cores
    python benchmarks/selection_oracle.py --json benchmarks/selection_oracle.json --workdir runs/selection_oracle \\
        --students_from benchmarks/selection_oracle.json                 # the selectors again, same students
    python benchmarks/selection_oracle.py --quick --json /tmp/oracle.json  # smoke test, well under a minute
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENTS = os.path.join(HERE, "..", "experiments")
for folder in (HERE, EXPERIMENTS):  # spawned workers import this file and the experiments by module name
    if folder not in sys.path:
        sys.path.append(folder)

SWEEP = (0.25, 0.5, 1.0, 2.0)
SWEPT_VERDICT = ("kde (sigma = 0.5): I(X;F) + I(Y;F)", "kde swept (mean score over sigma)")
BASELINES = ("last checkpoint", "checkpoint at 0.5", "best teacher accuracy")
PARITY = {  # the reduced sandbox (see the module docstring)
    "n_bits": 40,
    "k": 3,
    "teacher_width": 256,
    "teacher_steps": 3200,
    "teacher_save_steps": 200,
    "student_width": 50,
    "student_steps": 4000,
    "eval_steps": 200,
    "eval_size": 2048,
    "probe_size": 2048,
}
QUICK = {
    "digits": {"teacher_steps": 60, "teacher_save_steps": 20, "student_epochs": 1.0},
    "parity": {"n_bits": 12, "k": 2, "teacher_width": 32, "teacher_steps": 120, "teacher_save_steps": 40,
               "student_width": 16, "student_steps": 60, "eval_steps": 20, "eval_size": 256, "probe_size": 256},
}  # fmt: skip


@dataclass
class OracleArguments:
    tasks: str = field(default="digits,parity", metadata={"help": "Comma-separated: digits, parity."})
    digits_teachers: int = field(default=3, metadata={"help": "digits: teacher seeds (trajectories)."})
    digits_student_seeds: int = field(
        default=4, metadata={"help": "digits: paired student seeds per checkpoint (and teacher)."}
    )
    digits_probe_size: int = field(
        default=0, metadata={"help": "digits: probe examples from the training split (0 = all 1,200)."}
    )
    parity_teachers: int = field(
        default=2, metadata={"help": "parity: teacher seeds (supports, trajectories)."}
    )
    parity_student_seeds: int = field(
        default=3, metadata={"help": "parity: paired student seeds per checkpoint."}
    )
    quick: bool = field(
        default=False,
        metadata={"help": "Tiny settings for a smoke test (1 teacher, 2 seeds, 3 checkpoints per task)."},
    )
    num_workers: int = field(default=1, metadata={"help": "Processes for the student runs (1 = inline)."})
    json: str | None = field(default=None, metadata={"help": "Write every number here."})
    figure_dir: str | None = field(
        default=None, metadata={"help": "Write selection_oracle_<task>.png here (score vs student quality)."}
    )
    workdir: str | None = field(
        default=None, metadata={"help": "Where the teacher trajectories go (default: a temporary folder)."}
    )
    students_from: str | None = field(
        default=None,
        metadata={
            "help": "Re-score only: take every student's quality from this earlier --json and the teachers from "
            "--workdir (as that run left them), and run the selectors again (e.g. after changing an estimator)."
        },
    )


# ---- the experiments, loaded from their files ---------------------------------------------------------------


def load_experiment(name: str):
    """``experiments/<name>.py`` as a module (registered in ``sys.modules``, so its dataclasses and spawned
    workers resolve it by name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def digits_args(args: OracleArguments, workdir: str):
    demo = load_experiment("demo_digits")
    settings = QUICK["digits"] if args.quick else {}
    return demo.DemoArguments(output_dir=os.path.join(workdir, "digits"), num_workers=1, **settings)


def parity_task(args: OracleArguments):
    sp = load_experiment("sparse_parity")
    return sp.ParityArguments(**(QUICK["parity"] if args.quick else PARITY))


# ---- student runs (one job = one student) ------------------------------------------------------------------

_WORKER: dict = {}


def init_worker(demo_args) -> None:
    """Per process: the digits data and metric (the demo's own worker set-up), one torch thread."""
    if demo_args is not None:
        load_experiment("demo_digits").init_worker(demo_args)
        _WORKER["digits"] = True
    else:
        load_experiment("_harness").quiet_process(1)


def run_job(job: dict) -> dict:
    """One student: ``job["task"]`` is ``digits`` (the demo's ``run_task``) or ``parity``."""
    if job["task"] == "digits":
        demo = load_experiment("demo_digits")
        arm = {
            "name": job["checkpoint"],
            "kind": "checkpoint",
            "spec": job["checkpoint"],
            "alpha": job["alpha"],
        }
        result = demo.run_task({"kind": "student", "arm": arm, "teacher_dir": job["teacher_dir"],
                                "student_seed": job["seed"]})  # fmt: skip
        return {**job, "quality": result["accuracy"]}
    return {**job, "quality": parity_student(job)}


def parity_student(job: dict) -> float:
    """One-shot pure KD (alpha = 0, τ = 1) from one checkpoint; the mean held-out accuracy over the run."""
    sp = load_experiment("sparse_parity")
    _, ParityMLP, ParityBatches = sp.torch_parts()
    from transformers import TrainerCallback

    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer

    task, seed = job["parity_task"], job["seed"]
    held_out = sp.fixed_set(task, job["support"], task.eval_size, sp.EVAL_SEED)
    curve: list[float] = []

    class HeldOut(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % task.eval_steps == 0:
                curve.append(sp.accuracy(model, held_out))

    with tempfile.TemporaryDirectory(prefix="oracle_parity_") as scratch:
        config = sp.common_args(task, scratch, task.student_steps, seed)
        config.update(teacher=job["teacher_dir"], teacher_checkpoints=job["checkpoint"], alpha=0.0,
                      temperature=1.0, save_strategy="no")  # fmt: skip
        sp.seed_everything(10_000 + seed)  # the same initialisation for every checkpoint of a seed
        trainer = CheckpointDistillTrainer(
            model=ParityMLP(task.n_bits, task.student_width),
            args=CheckpointDistillConfig(**config),
            train_dataset=ParityBatches(task.n_bits, job["support"], task.batch_size, seed=2000 + seed),
            data_collator=sp.first_item,
            callbacks=[HeldOut()],
            teacher_model_init=lambda: ParityMLP(task.n_bits, task.teacher_width),
        )
        trainer.train()
    return sum(curve) / len(curve)


# ---- teachers and their features -----------------------------------------------------------------------------


def digits_teachers(args: OracleArguments, demo_args) -> tuple[list[dict], list[dict], type]:
    """Train the demo's teachers: per teacher its folder and checkpoints (name, step, fraction, logged test
    accuracy); the probe batches (the training split, or its first ``digits_probe_size`` examples); the CNN."""
    demo = load_experiment("demo_digits")
    from hf_ckd import Trajectory
    from hf_ckd.metrics import classification_metrics

    demo.quiet_process(1)
    train, test = demo.load_digits_splits(demo_args.train_size, demo_args.split_seed)
    probe = train
    if args.digits_probe_size:
        probe = train.select(range(min(args.digits_probe_size, len(train))))
    teachers = []
    for k in range(args.digits_teachers):
        folder = os.path.join(demo_args.output_dir, "teachers", f"seed-{k}")
        if not args.students_from:  # re-scoring reads the earlier run's teachers
            demo.train_teacher(demo_args, k, folder, train, test, classification_metrics())
        checkpoints = [
            {"name": c.name, "step": c.step, "fraction": c.fraction, "teacher_accuracy": c.metrics["eval_accuracy"]}
            for c in Trajectory.from_local(folder)
        ]  # fmt: skip
        teachers.append({"seed": k, "folder": folder, "checkpoints": checkpoints})
    batches = [probe[i : i + 256] for i in range(0, len(probe), 256)]
    return teachers, batches, demo.model_classes()[0]


def parity_teachers(args: OracleArguments, task, workdir: str) -> tuple[list[dict], object]:
    """Train the reduced sandbox's teachers: per teacher its folder, support, checkpoints (with held-out
    accuracy) and probe batch (``probe_size`` fresh examples); and the teacher's ``model_init``."""
    sp = load_experiment("sparse_parity")
    from hf_ckd import Trajectory, load_teacher

    _, ParityMLP, _ = sp.torch_parts()
    teachers = []
    for seed in range(args.parity_teachers):
        support = sp.support_of(seed, task.n_bits, task.k)
        folder = os.path.join(workdir, "parity", f"seed{seed}")
        sp.train_teacher(task, seed, folder, overwrite=True)
        held_out = sp.fixed_set(task, support, task.eval_size, sp.EVAL_SEED)
        checkpoints = []
        for c in Trajectory.from_local(folder):
            model = load_teacher(c, model_init=lambda: ParityMLP(task.n_bits, task.teacher_width))
            checkpoints.append({"name": c.name, "step": c.step, "fraction": c.fraction,
                                "teacher_accuracy": sp.accuracy(model, held_out)})  # fmt: skip
        probe = sp.fixed_set(task, support, task.probe_size, sp.PROBE_SEED)
        teachers.append({"seed": seed, "folder": folder, "support": support, "checkpoints": checkpoints,
                         "batches": [{"x": probe["x"], "labels": probe["labels"]}]})  # fmt: skip
    return teachers, lambda: ParityMLP(task.n_bits, task.teacher_width)


def score_teacher(teacher: dict, batches: list[dict], model_init) -> dict[str, list[dict]]:
    """Every selector's rows (``name``, ``step``, ``score`` and the verdict's inputs) for one trajectory, the
    estimators run on one extraction of each checkpoint's penultimate features; and the seconds each took."""
    from hf_ckd import Trajectory, load_teacher
    from hf_ckd.selection import extract_representation, normalise_scores, probe_inputs, score_checkpoint

    inputs = probe_inputs(batches)
    estimators = {"kde": {"sigma_sweep": SWEEP}, "probe": {}, "reconstruction": {}, "variational": {}}
    rows: dict[str, list[dict]] = {name: [] for name in estimators}
    seconds = dict.fromkeys(estimators, 0.0)
    for checkpoint in Trajectory.from_local(teacher["folder"]):
        model = load_teacher(checkpoint, model_init=model_init, device="cpu")
        features, logits, labels = extract_representation(model, batches)
        base = {"name": checkpoint.name, "step": checkpoint.step, "fraction": checkpoint.fraction,
                "accuracy": float((logits.argmax(-1) == labels).float().mean())}  # fmt: skip
        for name, options in estimators.items():
            start = time.perf_counter()
            row = score_checkpoint(features, logits, labels, name, inputs=inputs, **options)
            seconds[name] += time.perf_counter() - start
            rows[name].append({**base, **row})
    for name in rows:
        normalise_scores(rows[name])
    return selector_rows(rows), seconds


def _term_rows(rows: list[dict], term: str, saturation: str) -> list[dict]:
    """A single-term selector: score = the term over its maximum (Algorithm 1 with one term)."""
    return [
        {"name": r["name"], "step": r["step"], "score": r[f"{term}_norm"], saturation: r[saturation]}
        for r in rows
    ]


def selector_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The selectors of the tables, from the estimators' normalised rows."""
    kde, probe, recon = rows["kde"], rows["probe"], rows["reconstruction"]
    swept = [{**r, "score": r["sweep_score_mean"]} for r in kde]
    infopro = [
        {"name": x["name"], "step": x["step"], "score": x["i_xf_norm"] + y["i_yf_norm"],
         "saturation_x": x["saturation_x"], "saturation_y": y["saturation_y"]}
        for x, y in zip(recon, probe)
    ]  # fmt: skip
    return {
        "kde (sigma = 0.5): I(X;F) + I(Y;F)": kde,
        "kde (sigma = 0.5): I(X;F) only": _term_rows(kde, "i_xf", "saturation_x"),
        "kde (sigma = 0.5): I(Y;F) only": _term_rows(kde, "i_yf", "saturation_y"),
        "kde swept (mean score over sigma)": swept,
        "probe: I(Y;F)": _term_rows(probe, "i_yf", "saturation_y"),
        "reconstruction: I(X;F)": _term_rows(recon, "i_xf", "saturation_x"),
        "infopro: reconstruction + probe": infopro,
        "variational: I(Y;F) of the teacher's logits": _term_rows(
            rows["variational"], "i_yf", "saturation_y"
        ),
        "_raw": rows,
    }


# ---- statistics -------------------------------------------------------------------------------------------


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (NaN when either list is constant)."""
    from scipy import stats

    if len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd / math.sqrt(n)


def evaluate(
    teachers: list[dict], quality: dict, picks: dict[str, list[str]], scores: dict
) -> dict[str, dict]:
    """Per selector: picks, Spearman (per teacher and mean), regret (per teacher, mean ± SE over the pairs).

    ``quality[(k, name)]`` is the list of the student qualities of teacher k's checkpoint ``name`` over the
    paired seeds; ``picks[selector][k]`` its pick on teacher k; ``scores[selector][k]`` its score per
    checkpoint (in checkpoint order), or None for a baseline.
    """
    table = {}
    for selector, chosen in picks.items():
        differences, per_teacher, correlations = [], [], []
        for k, teacher in enumerate(teachers):
            names = [c["name"] for c in teacher["checkpoints"]]
            means = [sum(quality[(k, n)]) / len(quality[(k, n)]) for n in names]
            oracle = names[max(range(len(names)), key=lambda i: (means[i], -i))]
            d = [o - p for o, p in zip(quality[(k, oracle)], quality[(k, chosen[k])])]
            differences += d
            per_teacher.append(sum(d) / len(d))
            if scores.get(selector) is not None:
                correlations.append(spearman(scores[selector][k], means))
        regret, se = mean_se(differences)
        finite = [c for c in correlations if math.isfinite(c)]
        table[selector] = {
            "picks": chosen,
            "regret": regret,
            "regret_se": se,
            "regret_per_teacher": per_teacher,
            "within_noise": regret <= 2 * se + 1e-12 if math.isfinite(se) else regret == 0,
            "spearman_per_teacher": correlations,
            "spearman": sum(finite) / len(finite) if finite else (math.nan if correlations else None),
        }
    return table


# ---- one task ----------------------------------------------------------------------------------------------


def run_task(task_name: str, args: OracleArguments, workdir: str, demo_args) -> dict:
    """Teachers, every checkpoint's students, every selector's scores and the oracle table for one task."""
    from hf_ckd.stability import sweep_stability, verdict

    harness = load_experiment("_harness")
    start = time.time()
    if task_name == "digits":
        teachers, batches, model_init = digits_teachers(args, demo_args)
        seeds, extra = args.digits_student_seeds if not args.quick else 2, {"alpha": demo_args.alpha}
        for t in teachers:
            t["batches"] = batches
    else:
        parity = parity_task(args)
        teachers, model_init = parity_teachers(args, parity, workdir)
        seeds, extra = args.parity_student_seeds if not args.quick else 2, {"parity_task": parity}
    if args.quick:
        teachers = teachers[:1]
    teacher_seconds = time.time() - start

    jobs = []
    for k, teacher in enumerate(teachers):
        for j in range(seeds):
            for c in teacher["checkpoints"]:
                job = {"task": task_name, "teacher": k, "teacher_dir": teacher["folder"], "checkpoint": c["name"],
                       "seed": k * seeds + j, **extra}  # fmt: skip
                if task_name == "parity":
                    job["support"] = teacher["support"]
                jobs.append(job)
    start = time.time()
    quality: dict = {}
    earlier_student_seconds = None
    if args.students_from:
        with open(args.students_from, encoding="utf-8") as f:
            earlier = json.load(f)["tasks"][task_name]
        for (k, name), value in ((key.split("/", 1), v) for key, v in earlier["quality"].items()):
            quality[(int(k), name)] = value
        expected = {(job["teacher"], job["checkpoint"]) for job in jobs}
        if set(quality) != expected or earlier["student_seeds"] != seeds:
            raise ValueError(f"{args.students_from} holds other {task_name} runs than these settings make.")
        earlier_student_seconds = earlier["seconds"]["students"]
    else:
        init = (init_worker, (demo_args if task_name == "digits" else None,))
        for r in harness.map_jobs(run_job, jobs, args.num_workers, *init):
            quality.setdefault((r["teacher"], r["checkpoint"]), []).append(r["quality"])
    student_seconds = time.time() - start if earlier_student_seconds is None else earlier_student_seconds

    start = time.time()
    per_teacher = []
    estimator_seconds: dict[str, float] = {}
    for teacher in teachers:
        selectors, seconds = score_teacher(teacher, teacher["batches"], model_init)
        per_teacher.append(selectors)
        for name, s in seconds.items():
            estimator_seconds[name] = estimator_seconds.get(name, 0.0) + s
    scoring_seconds = time.time() - start

    names = [s for s in per_teacher[0] if s != "_raw"]
    picks, scores, verdicts = {}, {}, {}
    for selector in names:
        picks[selector], scores[selector], verdicts[selector] = [], [], []
        for selectors in per_teacher:
            rows = selectors[selector]
            ranked = sorted(rows, key=lambda r: (-r["score"], r["step"]))
            picks[selector].append(ranked[0]["name"])
            scores[selector].append([r["score"] for r in rows])
            # the kde selectors are judged as the recipe judges them with --sigma_sweep 0.25,0.5,1,2
            stability = sweep_stability(rows) if selector in SWEPT_VERDICT else None
            verdicts[selector].append(verdict(rows, [ranked[0]["name"]], stability)["verdict"])
    kde_stability = [sweep_stability(s["_raw"]["kde"]) for s in per_teacher]
    for teacher in teachers:
        checkpoints = teacher["checkpoints"]
        fractions = [c["fraction"] for c in checkpoints]
        middle = min(range(len(checkpoints)), key=lambda i: (abs(fractions[i] - 0.5), i))
        best = max(range(len(checkpoints)), key=lambda i: (checkpoints[i]["teacher_accuracy"], -i))
        for name, index in zip(BASELINES, (len(checkpoints) - 1, middle, best)):
            picks.setdefault(name, []).append(checkpoints[index]["name"])
    baseline_scores = {
        "best teacher accuracy": [[c["teacher_accuracy"] for c in t["checkpoints"]] for t in teachers],
        "checkpoint at 0.5": None,
        "last checkpoint": [[c["fraction"] for c in t["checkpoints"]] for t in teachers],
    }
    table = evaluate(teachers, quality, picks, {**scores, **baseline_scores})
    for selector, row in table.items():
        row["verdicts"] = verdicts.get(selector)
    oracle = []
    for k, teacher in enumerate(teachers):
        checkpoints = [c["name"] for c in teacher["checkpoints"]]
        means = [sum(quality[(k, n)]) / len(quality[(k, n)]) for n in checkpoints]
        order = sorted(range(len(checkpoints)), key=lambda i: (-means[i], i))
        gap = [
            a - b for a, b in zip(quality[(k, checkpoints[order[0]])], quality[(k, checkpoints[order[1]])])
        ]
        oracle.append({"teacher": teacher["seed"], "best": checkpoints[order[0]], "runner_up": checkpoints[order[1]],
                       "gap_mean_se": mean_se(gap), "quality_mean": dict(zip(checkpoints, means))})  # fmt: skip
    return {
        "task": task_name,
        "student_seeds": seeds,
        "teachers": [{k: v for k, v in t.items() if k != "batches"} for t in teachers],
        "quality": {f"{k}/{n}": v for (k, n), v in quality.items()},
        "oracle": oracle,
        "table": table,
        "selector_rows": [{s: rows for s, rows in sel.items() if s != "_raw"} for sel in per_teacher],
        "kde_sweep_stability": kde_stability,
        "students_from": args.students_from,
        "seconds": {
            "teachers": teacher_seconds,
            "students": student_seconds,
            "scoring": scoring_seconds,
            "estimators": estimator_seconds,
            "student_runs": len(jobs),
        },
    }


# ---- report ---------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    """The task's oracle table and the oracle per teacher, as markdown."""
    scale, unit = (100.0, "points") if result["task"] == "digits" else (100.0, "points of mean accuracy")
    lines = [
        f"**{result['task']}**: {len(result['teachers'])} teacher(s) x {len(result['teachers'][0]['checkpoints'])} "
        f"checkpoints x {result['student_seeds']} paired student seeds; regret in {unit}.",
        "",
        "| selector | pick per teacher | Spearman(score, student quality) | regret ± SE | within noise | verdicts |",
        "|---|---|---|---|---|---|",
    ]
    for selector, row in result["table"].items():
        rho = row["spearman"]
        rho_text = (
            "—"
            if rho is None
            else f"{rho:+.2f} ({' / '.join(f'{c:+.2f}' for c in row['spearman_per_teacher'])})"
        )
        picks = " / ".join(p.removeprefix("checkpoint-") for p in row["picks"])
        regret = f"{scale * row['regret']:.2f} ± {scale * row['regret_se']:.2f}"
        verdicts = " / ".join(row["verdicts"]) if row.get("verdicts") else "—"
        lines.append(
            f"| {selector} | {picks} | {rho_text} | {regret} | {'yes' if row['within_noise'] else 'no'} | {verdicts} |"
        )
    lines += [
        "",
        "| teacher | oracle (best mean) | runner-up | gap ± SE | mean quality per checkpoint |",
        "|---|---|---|---|---|",
    ]
    for o in result["oracle"]:
        gap, se = o["gap_mean_se"]
        qualities = ", ".join(
            f"{n.removeprefix('checkpoint-')}: {scale * q:.1f}" for n, q in o["quality_mean"].items()
        )
        lines.append(
            f"| {o['teacher']} | {o['best']} | {o['runner_up']} | {scale * gap:.2f} ± {scale * se:.2f} | {qualities} |"
        )
    s = result["seconds"]
    lines += [
        "",
        f"Wall time: teachers {s['teachers']:.0f} s, {s['student_runs']} student runs {s['students']:.0f} s, "
        f"scoring {s['scoring']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in s["estimators"].items())
        + ").",
    ]
    return "\n".join(lines)  # fmt: skip


def plot(result: dict, path: str) -> None:
    """Score against mean student quality per checkpoint, one panel per selector, one colour per teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selectors = [s for s in result["table"] if result["table"][s]["spearman"] is not None]
    columns = 4
    rows = math.ceil(len(selectors) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, selector in zip(axes.flat, selectors):
        for k, teacher in enumerate(result["teachers"]):
            names = [c["name"] for c in teacher["checkpoints"]]
            quality = [result["oracle"][k]["quality_mean"][n] for n in names]
            if selector in BASELINES:
                score = [c["teacher_accuracy"] if selector == "best teacher accuracy" else c["fraction"]
                         for c in teacher["checkpoints"]]  # fmt: skip
            else:
                score = [r["score"] for r in result["selector_rows"][k][selector]]
            ax.plot(score, quality, "o", ms=4, alpha=0.8, label=f"teacher {teacher['seed']}")
            pick = names.index(result["table"][selector]["picks"][k])
            ax.plot(score[pick], quality[pick], "*", ms=12, color="tab:red")
        ax.set_title(f"{selector}\nSpearman {result['table'][selector]['spearman']:+.2f}", fontsize=8)
        axis = {"best teacher accuracy": "teacher accuracy", "last checkpoint": "fraction of training"}
        ax.set_xlabel(axis.get(selector, "score (normalised terms summed)"), fontsize=8)
        ax.set_ylabel("student quality", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(selectors) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{result['task']}: selector score vs measured student quality (red star: the pick)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return value


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(OracleArguments).parse_args_into_dataclasses(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - {"digits", "parity"})
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown or no tasks {unknown or args.tasks!r}; choose digits, parity.")
    if args.quick:
        args.digits_teachers = args.parity_teachers = 1
        args.digits_probe_size = args.digits_probe_size or 300
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="selection_oracle_") as scratch:
        workdir = args.workdir or scratch
        demo_args = digits_args(args, workdir) if "digits" in tasks else None
        results = {}
        for name in tasks:
            results[name] = run_task(name, args, workdir, demo_args)
            print(markdown(results[name]) + "\n", flush=True)
            if args.figure_dir:
                os.makedirs(args.figure_dir, exist_ok=True)
                plot(results[name], os.path.join(args.figure_dir, f"selection_oracle_{name}.png"))
    harness = load_experiment("_harness")
    output = {
        "settings": {**asdict(args), "sweep": list(SWEEP), "parity": asdict(parity_task(args))},
        "machine": harness.describe_machine(args.num_workers, 1),
        "wall_time_s": round(time.time() - started, 1),
        "tasks": results,
    }
    output = _jsonable(output)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(output, f, indent=1)
    print(f"Wall time {output['wall_time_s']:.0f} s.")
    return output


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Score every checkpoint of a teacher trajectory by task-related mutual information and pick T*.

For each checkpoint, the representation F of a probe set (penultimate features by default) gives
I(X;F) and I(Y;F); each term is divided by its maximum over the checkpoints and T* maximises the sum
(Algorithm 1 of Wang et al. 2022, *Efficient Knowledge Distillation from Model Checkpoints*,
arXiv:2210.06458). Writes ``selection.json`` (consumed by ``--teacher_selection`` of the distill recipes)
and ``selection.png``, prints the table and a one-line verdict (clear pick / weak preference / cannot rank,
from the score margin and, with ``--sigma_sweep``, whether the pick survives other kde noise levels). See
docs/selection.md for how to read them: on trained features a small noise makes every estimate sit at its
ceiling, and then the argmax means nothing.

Usage:

    hf-ckd select_teachers --trajectory runs/wrn40_2 --dataset_name uoft-cs/cifar100 \\
        --probe_samples 2000 --output runs/wrn40_2/selection.json
    accelerate launch -m hf_ckd.scripts.distill_cifar100 --teacher runs/wrn40_2 \\
        --teacher_selection runs/wrn40_2/selection.json ...
    hf-ckd select_teachers --trajectory runs/wrn40_2 --sigma_sweep 0.25,0.5,1,2 ...   # kde at 4 more sigmas
    hf-ckd select_teachers --trajectory runs/wrn40_2 --estimator infopro ...         # probe + reconstruction

    hf-ckd select_teachers config.yaml      # every argument from a YAML (or .json) file
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_ckd.scripts._common import parse_recipe_args, run_recipe

logger = logging.getLogger(__name__)


@dataclass
class SelectionArguments:
    trajectory: str = field(
        metadata={
            "help": "The teacher run: a Trainer output_dir with checkpoint-<step>/ folders, or a Hub repo "
            "hub:ORG/NAME[@PATTERN] (branches/tags per checkpoint, or checkpoint-<step>/ subfolders)."
        }
    )
    revision: str = field(
        default="main",
        metadata={"help": "For a Hub trajectory: the revision whose checkpoint-<step>/ subfolders are read."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Hub cache folder for a Hub trajectory (default: HF_HUB_CACHE)."}
    )
    token: str | None = field(
        default=None, metadata={"help": "Hub token for a private trajectory (default: the logged-in token)."}
    )
    output: str = field(
        default="selection.json",
        metadata={"help": "Where to write selection.json (selection.png goes beside it)."},
    )
    checkpoints: str = field(default="all", metadata={"help": "Candidate checkpoints (a checkpoint spec)."})
    estimator: str = field(
        default="kde",
        metadata={
            "help": "MI estimator: kde, kde_upper, kde_lower, binning, variational, probe (I(Y;F) of a cross-fitted "
            "linear probe), reconstruction (I(X;F) proxy of a cross-fitted linear decoder; continuous inputs) or "
            "infopro (both) (docs/mi_estimators.md)."
        },
    )
    representation: str = field(
        default="penultimate",
        metadata={
            "help": "F: penultimate (what the head reads), logits or probs.",
            "choices": ["penultimate", "logits", "probs"],
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Temperature of representation=probs."})
    noise_std: float | None = field(
        default=None, metadata={"help": "kde: absolute noise std (overrides the relative rule)."}
    )
    noise_std_relative: float | None = field(
        default=None,
        metadata={
            "help": "kde: noise std as a fraction of the features' scale (estimator default if unset)."
        },
    )
    sigma_sweep: str = field(
        default="",
        metadata={
            "help": "kde estimators: comma-separated relative noise sigmas to score at as well, e.g. 0.25,0.5,1,2; "
            "selection.json then records the picks and Kendall's tau across them, and warns if the pick moves."
        },
    )
    bins: int | None = field(default=None, metadata={"help": "binning: bins per unit."})
    folds: int | None = field(
        default=None, metadata={"help": "probe, reconstruction, infopro: cross-fitting folds (default 5)."}
    )
    top_k: int = field(
        default=1, metadata={"help": "How many checkpoints to select (k > 1: a snapshot ensemble)."}
    )
    batch_size: int = field(default=256, metadata={"help": "Probe batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of the probe subset and of the estimator's noise."})


@dataclass
class ProbeArguments:
    dataset_name: str | None = field(
        default="uoft-cs/cifar100",
        metadata={"help": "A dataset on the Hub (ignored when --dataset_path is set)."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of the Hub dataset."}
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "A local dataset (save_to_disk folder, data folder or file)."}
    )
    probe_split: str = field(default="test", metadata={"help": "Split the probe set is drawn from."})
    probe_samples: int = field(default=1000, metadata={"help": "Probe set size (a seeded random subset)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column. Default: img or image."})
    text_column: str | None = field(
        default=None, metadata={"help": "Text column. Default: text or sentence."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Label column. Default: fine_label, label or labels."}
    )
    max_length: int = field(default=128, metadata={"help": "Text: tokens per example."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Text: tokenizer (default: the last checkpoint's)."}
    )


def probe_batches(checkpoint, probe_args, selection_args):
    """The probe set as a list of collated batches, prepared the way the teacher was trained to read it."""
    import timm
    import torch
    from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding

    from hf_ckd import data
    from hf_ckd.hub import fetch_checkpoint
    from hf_ckd.modeling import is_timm_model

    raw = data.load_dataset_from_args(
        probe_args.dataset_name, probe_args.dataset_config_name, probe_args.dataset_path
    )
    split = data.get_split(raw, probe_args.probe_split, "probe_split")
    split = split.shuffle(seed=selection_args.seed).select(range(min(probe_args.probe_samples, len(split))))
    checkpoint = fetch_checkpoint(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint.path)
    if is_timm_model(config):
        model = timm.create_model(config.architecture, pretrained=False, num_classes=config.num_labels)
        data_config = timm.data.resolve_data_config({}, model=model)
        image, label = data.image_columns(split, probe_args.image_column, probe_args.label_column)
        data.check_label_space(split, label, config.num_labels, f"the teacher ({checkpoint.name})")
        transform = data.image_transform(
            False, data_config["mean"], data_config["std"], data_config["input_size"][-1]
        )
        dataset, collate = data.with_image_transform(split, transform, image, label), data.collate_images
    else:
        tokenizer = AutoTokenizer.from_pretrained(probe_args.tokenizer_name or checkpoint.path)
        text, label = (
            data.text_column(split, probe_args.text_column),
            data.label_column(split, probe_args.label_column),
        )
        data.check_label_space(split, label, config.num_labels, f"the teacher ({checkpoint.name})")
        dataset = data.tokenize_for_classification(split, tokenizer, text, label, probe_args.max_length)
        collate = DataCollatorWithPadding(tokenizer)
    loader = torch.utils.data.DataLoader(dataset, batch_size=selection_args.batch_size, collate_fn=collate)
    return list(loader), len(dataset)


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((SelectionArguments, ProbeArguments), description=__doc__.split("\n\n")[0])


def resolve_teachers(selection_args: SelectionArguments):
    """The teacher trajectory to score and its candidate checkpoints (``--checkpoints``, in order, once each)."""
    from hf_ckd import load_trajectory

    trajectory = load_trajectory(
        selection_args.trajectory,
        revision=selection_args.revision,
        token=selection_args.token,
        cache_dir=selection_args.cache_dir,
    )
    return trajectory, list(dict.fromkeys(trajectory.select(selection_args.checkpoints)))


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (default: ``sys.argv[1:]``), score the checkpoints, and return ``selection.json``."""
    selection_args, probe_args = parse_recipe_args(make_parser(), sys.argv[1:] if argv is None else argv)

    import torch

    from hf_ckd.mi import ESTIMATORS, estimator_accepts
    from hf_ckd.selection import (
        SelectionError,
        label_ceilings,
        plot_selection,
        score_trajectory,
        select,
        selection_table,
        write_selection,
    )

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.manual_seed(selection_args.seed)
    trajectory, candidates = resolve_teachers(selection_args)
    batches, probe_size = probe_batches(candidates[-1], probe_args, selection_args)
    params = {
        k: v
        for k, v in {
            "noise_std": selection_args.noise_std,
            "noise_std_relative": selection_args.noise_std_relative,
            "bins": selection_args.bins,
            "folds": selection_args.folds,
        }.items()
        if v is not None
    }
    if selection_args.estimator in ESTIMATORS and estimator_accepts(selection_args.estimator, "seed"):
        params.setdefault("seed", selection_args.seed)
    try:
        sweep = [float(v) for v in selection_args.sigma_sweep.split(",") if v.strip()]
    except ValueError:
        raise SelectionError(
            f"--sigma_sweep {selection_args.sigma_sweep!r} is not a comma-separated list of numbers."
        ) from None
    rows = score_trajectory(
        trajectory,
        batches,
        estimator=selection_args.estimator,
        representation=selection_args.representation,
        temperature=selection_args.temperature,
        estimator_params=params,
        checkpoints=candidates,
        sigma_sweep=sweep or None,
    )
    selected = select(rows, selection_args.top_k)
    ceilings = label_ceilings(torch.cat([b["labels"] for b in batches]))
    probe = {
        "dataset": probe_args.dataset_path or probe_args.dataset_name,
        "split": probe_args.probe_split,
        "samples": probe_size,
        "seed": selection_args.seed,
        "log_n": ceilings[0],
        "h_y": ceilings[1],
    }
    content = write_selection(
        selection_args.output,
        trajectory,
        rows,
        selected,
        selection_args.estimator,
        selection_args.representation,
        probe,
        estimator_params=params,
    )
    judged = content["verdict"]
    plot_selection(
        os.path.splitext(selection_args.output)[0] + ".png",
        rows,
        selected,
        ceilings,
        estimator=selection_args.estimator,
        verdict=judged,
    )
    print(selection_table(rows, selected))
    print(f"\nSelected (T*): {', '.join(selected)}; written to {selection_args.output}")
    print(f"Verdict: {judged['verdict']}: {judged['reason']}")
    for warning in content["warnings"]:
        logger.warning(warning)
    return content


if __name__ == "__main__":
    sys.exit(run_recipe(main))

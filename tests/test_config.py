"""CheckpointDistillConfig: validation, HfArgumentParser, and docstring/help agreement."""

import dataclasses
import re

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_ckd import CheckpointDistillConfig

OWN_FIELDS = [
    f
    for f in dataclasses.fields(CheckpointDistillConfig)
    if f.name not in TrainingArguments.__dataclass_fields__
]


def test_defaults_and_hf_argument_parser(tmp_path):
    parser = HfArgumentParser(CheckpointDistillConfig)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--teacher",
            "runs/teacher",
            "--teacher_checkpoints",
            "0.3,0.5,last",
            "--teacher_weights",
            "1",
            "2",
            "1",
            "--temperature",
            "2.5",
            "--alpha",
            "0.2",
            "--ensemble_average",
            "logits",
            "--teacher_dtype",
            "bf16",
        ]
    )
    assert args.teacher == "runs/teacher"
    assert args.teacher_checkpoints == "0.3,0.5,last"
    assert args.teacher_weights == [1.0, 2.0, 1.0]
    assert (args.temperature, args.alpha, args.ensemble_average, args.teacher_dtype) == (
        2.5,
        0.2,
        "logits",
        "bf16",
    )
    defaults = CheckpointDistillConfig(output_dir=str(tmp_path))
    assert (defaults.teacher_checkpoints, defaults.temperature, defaults.alpha) == ("last", 4.0, 0.5)
    assert defaults.ensemble_average == "probs" and not defaults.teacher_trust_remote_code


def test_comma_separated_weights_from_python(tmp_path):
    assert CheckpointDistillConfig(output_dir=str(tmp_path), teacher_weights="1, 3").teacher_weights == [
        1.0,
        3.0,
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"alpha": 1.01}, "alpha"),
        ({"alpha": -0.5}, "alpha"),
        ({"ensemble_average": "max"}, "ensemble_average"),
        ({"teacher_dtype": "int8"}, "teacher_dtype"),
        ({"teacher_weights": [0.0, 0.0]}, "teacher_weights"),
        ({"teacher_weights": [1.0, -1.0]}, "teacher_weights"),
        ({"teacher_weights": "a,b"}, "teacher_weights"),
        ({"teacher_checkpoints": " "}, "teacher_checkpoints"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
    ],
)
def test_bad_values_name_the_field(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CheckpointDistillConfig(output_dir=str(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "")).strip()


@pytest.mark.parametrize("field", OWN_FIELDS, ids=lambda f: f.name)
def test_docstring_and_help_agree(field):
    """Every field is documented in the class docstring with the same text as its --help."""
    doc = CheckpointDistillConfig.__doc__
    match = re.search(rf"^\s+{field.name} \(.*?\):\n(.*?)(?=^\s+\w+ \(|^\s+>|\Z)", doc, re.M | re.S)
    assert match, f"{field.name} is not documented in the class docstring"
    default = "None" if field.default is None else repr(field.default).replace("'", '"')
    assert f"defaults to `{default}`" in match.group(0), (
        f"docstring default of {field.name} differs from {default}"
    )
    assert _normalise(match.group(1)) == _normalise(field.metadata["help"])


def test_help_renders():
    """argparse %-formats help strings: a stray '%' in a help text breaks --help of every recipe."""
    text = HfArgumentParser(CheckpointDistillConfig).format_help()
    assert "--teacher_checkpoints" in text and "--temperature" in text

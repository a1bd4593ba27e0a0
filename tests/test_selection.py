"""Checkpoint scoring, representations, selection.json, the sigma sweep and the verdict, and --teacher_selection
in the trainer."""

import json
import math

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_timm, trainer_args

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, Trajectory, TrajectoryError
from hf_ckd.selection import (
    SelectionError,
    extract_representation,
    normalise_scores,
    plot_selection,
    probe_inputs,
    read_selection,
    score_trajectory,
    select,
    selection_warnings,
    sweep_stability,
    teacher_spec,
    verdict,
    write_selection,
)


def text_batches(dataset, size=64):
    return [dataset[i : i + size] for i in range(0, len(dataset), size)]


def test_representations_have_the_shapes_the_head_reads(text_data):
    val = text_data[1]
    bert = tiny_bert(hidden=48).eval()
    features, logits, labels = extract_representation(bert, text_batches(val), "penultimate")
    assert features.shape == (256, 48) and logits.shape == (256, 4) and labels.shape == (256,)
    # The penultimate features are what the classifier reads: applying it gives the logits back.
    torch.testing.assert_close(bert.classifier(features), logits, atol=1e-5, rtol=1e-5)
    probs, _, _ = extract_representation(bert, text_batches(val), "probs", temperature=2.0)
    torch.testing.assert_close(probs, torch.softmax(logits / 2.0, -1))
    timm_model = tiny_timm().eval()
    batch = [{"pixel_values": torch.randn(8, 1, 16, 16), "labels": torch.arange(8) % 10}]
    features, logits, _ = extract_representation(timm_model, batch, "penultimate")
    assert features.shape == (8, timm_model.timm_model.num_features)


def test_token_level_models_are_refused():
    batch = [{"input_ids": torch.randint(0, 16, (4, 12)), "labels": torch.randint(0, 16, (4, 12))}]
    with pytest.raises(SelectionError, match="one prediction per example"):
        extract_representation(tiny_gpt2().eval(), batch, "logits")
    with pytest.raises(SelectionError, match="representation must be one of"):
        extract_representation(tiny_gpt2().eval(), batch, "attention")


def test_score_trajectory_rows_and_selection(text_teacher, text_data):
    traj = Trajectory.from_local(text_teacher)
    rows = score_trajectory(traj, text_batches(text_data[1]), estimator="kde", progress=False)
    assert [r["name"] for r in rows] == traj.names
    for row in rows:
        assert 0 <= row["accuracy"] <= 1
        assert 0 <= row["i_xf_norm"] <= 1 + 1e-12 and 0 <= row["i_yf_norm"] <= 1 + 1e-12
        assert row["score"] == pytest.approx(row["i_xf_norm"] + row["i_yf_norm"])
        assert row["i_yf"] <= row["i_xf"] + 1e-6  # I(T;Y) <= I(T;X) (data processing)
    assert max(r["i_xf_norm"] for r in rows) == pytest.approx(1.0)
    # Accuracy rises along the run (the teacher learns).
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    best = max(rows, key=lambda r: r["score"])["name"]
    assert select(rows, k=1) == [best]
    assert len(select(rows, k=2)) == 2
    # A datasets.Dataset is batched by score_trajectory itself, with the same result.
    same = score_trajectory(traj, text_data[1], estimator="kde", progress=False, batch_size=64)
    assert [r["score"] for r in same] == pytest.approx([r["score"] for r in rows])
    with pytest.raises(SelectionError, match="k=9"):
        select(rows, k=9)


def test_probe_set_checks(text_teacher, text_data):
    traj = Trajectory.from_local(text_teacher)
    one_class = text_data[1].filter(lambda row: row["labels"] == 0)
    with pytest.raises(SelectionError, match="1 class"):
        score_trajectory(traj, text_batches(one_class), progress=False)
    with pytest.raises(SelectionError, match="at least 20"):
        score_trajectory(traj, text_batches(text_data[1].select(range(8))), progress=False)
    with pytest.raises(SelectionError, match="Unknown estimator"):
        score_trajectory(traj, text_batches(text_data[1]), estimator="magic", progress=False)


def test_selection_file_roundtrip_and_errors(text_teacher, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    rows = [
        {"name": c.name, "step": c.step, "score": s, "saturation_x": 0.5, "saturation_y": 0.5}
        for c, s in zip(traj, [0.2, 1.9, 1.5, 1.0])
    ]
    path = tmp_path / "selection.json"
    content = write_selection(str(path), traj, rows, select(rows, 2), "kde", "penultimate", {"samples": 256})
    assert content["selected"] == ["checkpoint-60", "checkpoint-90"]
    assert read_selection(str(path), traj) == ["checkpoint-60", "checkpoint-90"]
    assert json.loads(path.read_text())["source"] == text_teacher

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"source": "runs/elsewhere", "selected": ["checkpoint-7"]}))
    with pytest.raises(TrajectoryError, match=r"runs/elsewhere.*checkpoint-7"):
        read_selection(str(other), traj)
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    with pytest.raises(SelectionError, match="not valid JSON"):
        read_selection(str(broken), traj)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"selected": []}))
    with pytest.raises(SelectionError, match="no 'selected'"):
        read_selection(str(empty), traj)
    with pytest.raises(SelectionError, match="does not exist"):
        read_selection(str(tmp_path / "missing.json"), traj)


def test_saturated_scores_warn(text_teacher, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    rows = [
        {"name": c.name, "step": c.step, "score": 2.0, "saturation_x": 1.0, "saturation_y": 0.999}
        for c in traj
    ]
    content = write_selection(
        str(tmp_path / "s.json"), traj, rows, ["checkpoint-30"], "kde", "penultimate", {}
    )
    assert len(content["warnings"]) == 2 and "log N" in content["warnings"][0]


def test_trainer_uses_the_selection(text_teacher, text_data, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"source": text_teacher, "selected": ["checkpoint-90"]}))
    args = CheckpointDistillConfig(
        **trainer_args(tmp_path / "s", teacher=text_teacher, teacher_selection=str(path), max_steps=2)
    )
    assert teacher_spec(args, traj) == ["checkpoint-90"]
    trainer = CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0]
    )
    assert [c.name for c in trainer.teachers.checkpoints] == ["checkpoint-90"]
    assert trainer.lineage["teacher_selection"] == str(path)


# ---- how sure a pick is: sigma sweep, Kendall's tau, verdict (hf_ckd/stability.py) ---------------------


def test_kendall_tau_matches_scipy():
    from scipy import stats

    from hf_ckd.selection import kendall_tau

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(0, 5, (12,), generator=g).tolist()  # ties on both sides
        b = torch.randint(0, 5, (12,), generator=g).tolist()
        assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 1, 1], [1, 2, 3]) != kendall_tau([1, 1, 1], [1, 2, 3])  # NaN: a constant list


def swept_rows(sweep_terms):
    """Rows as score_trajectory builds them: ``sweep_terms[c][s] = (i_xf, i_yf)`` of checkpoint c at the s-th
    sigma of 0.25, 0.5, 1; the main estimate is the one at 0.5."""
    grid = [0.25, 0.5, 1.0][: len(sweep_terms[0])]
    rows = []
    for c, terms in enumerate(sweep_terms):
        i_xf, i_yf = terms[1]
        sweep = [{"noise_std_relative": r, "i_xf": x, "i_yf": y} for r, (x, y) in zip(grid, terms)]
        rows.append(
            {"name": f"checkpoint-{10 * (c + 1)}", "step": 10 * (c + 1), "i_xf": i_xf, "i_yf": i_yf,
             "saturation_x": 0.3, "saturation_y": 0.4, "sigma_sweep": sweep}
        )  # fmt: skip
    return normalise_scores(rows)


def test_sweep_normalises_each_sigma_and_detects_a_moving_pick():
    # checkpoint 2 is best at small sigma, checkpoint 1 at large sigma; the orderings are reversed
    rows = swept_rows([[(1.0, 0.2), (1.0, 0.5), (1.0, 1.0)], [(1.0, 1.0), (1.0, 0.9), (1.0, 0.2)]])
    assert rows[0]["sweep_scores"] == pytest.approx([1.2, 1.0 + 0.5 / 0.9, 2.0])
    assert rows[1]["sweep_scores"] == pytest.approx([2.0, 2.0, 1.2])
    assert rows[0]["sweep_score_mean"] == pytest.approx(sum(rows[0]["sweep_scores"]) / 3)
    stability = sweep_stability(rows)
    assert stability["grid"] == [0.25, 0.5, 1.0]
    assert stability["picks"] == [["checkpoint-20"], ["checkpoint-20"], ["checkpoint-10"]]
    assert stability["pick_stable"] is False and stability["min_kendall_tau"] == -1.0
    assert stability["spread"]["checkpoint-20"] == pytest.approx(0.8)
    warnings = selection_warnings(rows, stability)
    assert len(warnings) == 1 and "changes with the kde noise sigma" in warnings[0]
    judged = verdict(rows, select(rows), stability)
    assert judged["verdict"] == "cannot rank" and "orderings disagree" in judged["reason"]
    assert select(rows, key="sweep_score_mean") == ["checkpoint-20"]


def rows_with_scores(scores, saturation_y=0.4):
    return [
        {"name": f"checkpoint-{i}", "step": i, "score": s, "saturation_x": 0.3, "saturation_y": saturation_y}
        for i, s in enumerate(scores, start=1)
    ]


def test_verdict_from_margin_flatness_and_saturation():
    clear = verdict(rows_with_scores([1.2, 1.9, 1.5]), ["checkpoint-2"])
    assert clear["verdict"] == "clear pick" and clear["margin"] == pytest.approx(0.4 / 1.9)
    weak = verdict(rows_with_scores([1.2, 1.9, 1.85]), ["checkpoint-2"])
    assert weak["verdict"] == "weak preference" and "2.6%" in weak["reason"]
    flat = verdict(rows_with_scores([1.99, 2.0, 1.985]), ["checkpoint-2"])
    assert flat["verdict"] == "cannot rank" and "0.7% of the best" in flat["reason"]
    saturated = verdict(rows_with_scores([1.2, 1.9, 1.5], saturation_y=0.99), ["checkpoint-2"])
    assert saturated["verdict"] == "weak preference" and "saturated" in saturated["reason"]
    both = [dict(r, saturation_x=0.995) for r in rows_with_scores([1.2, 1.9, 1.5], saturation_y=0.99)]
    assert verdict(both, ["checkpoint-2"])["verdict"] == "cannot rank"
    # k = 2: the margin is between the second pick and the third checkpoint
    two = verdict(rows_with_scores([1.2, 1.9, 1.5]), ["checkpoint-2", "checkpoint-3"])
    assert two["margin"] == pytest.approx(0.3 / 1.9) and two["verdict"] == "clear pick"
    assert verdict(rows_with_scores([1.0]), ["checkpoint-1"])["verdict"] == "cannot rank"
    # a moving pick: orderings that disagree (tau 1/3) cannot rank; orderings that agree (tau 2/3) are weak
    rows = swept_rows([[(1.0, 0.2), (1.0, 0.3)], [(1.0, 1.0), (1.0, 0.9)], [(1.0, 0.5), (0.99, 1.0)]])
    stability = sweep_stability(rows)
    assert stability["picks"] == [["checkpoint-20"], ["checkpoint-30"]] and not stability["pick_stable"]
    assert stability["min_kendall_tau"] == pytest.approx(1 / 3)
    assert verdict(rows, select(rows), stability)["verdict"] == "cannot rank"
    terms = [[(1.0, 0.1)] * 2, [(1.0, 0.3)] * 2, [(1.0, 1.0), (1.0, 0.95)], [(1.0, 0.95), (1.0, 1.0)]]
    rows = swept_rows(terms)
    stability = sweep_stability(rows)
    assert stability["min_kendall_tau"] == pytest.approx(2 / 3) and not stability["pick_stable"]
    moving = verdict(rows, select(rows), stability)
    assert moving["verdict"] == "weak preference" and "changes with sigma" in moving["reason"]
    # a stable sweep keeps a clear pick clear, and says so
    rows = swept_rows([[(1.0, 0.2), (1.0, 0.3)], [(1.0, 1.0), (1.0, 1.0)], [(1.0, 0.5), (1.0, 0.4)]])
    stable = verdict(rows, select(rows), sweep_stability(rows))
    assert stable["verdict"] == "clear pick" and "the same pick at every sigma" in stable["reason"]


def test_sigma_sweep_through_score_trajectory_and_selection_json(text_teacher, text_data, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    rows = score_trajectory(
        traj, text_batches(text_data[1]), estimator="kde", progress=False, sigma_sweep=[0.25, 1.0]
    )
    for row in rows:
        assert [e["noise_std_relative"] for e in row["sigma_sweep"]] == [0.25, 1.0]
        assert len(row["sweep_scores"]) == 2 and row["ceiling_x"] == pytest.approx(math.log(256))
    # a larger sigma compresses both terms (docs/mi_estimators.md)
    assert all(r["sigma_sweep"][0]["i_xf"] > r["sigma_sweep"][1]["i_xf"] for r in rows)
    selected = select(rows)
    content = write_selection(
        str(tmp_path / "s.json"), traj, rows, selected, "kde", "penultimate", {}, estimator_params={"seed": 0}
    )
    on_disk = json.loads((tmp_path / "s.json").read_text())
    assert on_disk["sigma_sweep"]["grid"] == [0.25, 1.0] and on_disk["estimator_params"] == {"seed": 0}
    assert on_disk["verdict"]["verdict"] in {"clear pick", "weak preference", "cannot rank"}
    assert on_disk["verdict"] == content["verdict"] and on_disk["schema_version"] == 2
    assert len(on_disk["sigma_sweep"]["kendall_tau"]) == 2
    with pytest.raises(SelectionError, match="sigma sweep applies to the kde estimators"):
        score_trajectory(
            traj, text_batches(text_data[1]), estimator="probe", progress=False, sigma_sweep=[1.0]
        )
    with pytest.raises(SelectionError, match="no floating-point input"):
        score_trajectory(traj, text_batches(text_data[1]), estimator="reconstruction", progress=False)


def test_infopro_scores_an_image_trajectory(timm_teacher, digits_data, tmp_path):
    """The learned estimators through the selection API: reconstruction reads the probe images."""
    traj = Trajectory.from_local(timm_teacher)
    batches = [digits_data[1][i : i + 128] for i in range(0, 256, 128)]
    assert probe_inputs(batches).shape == (256, 16 * 16)
    rows = score_trajectory(traj, batches, estimator="infopro", progress=False, estimator_params={"folds": 3})
    for row in rows:
        assert row["i_xf"] > 0 and 0 <= row["i_yf"] <= row["ceiling_y"] + 1e-12
        assert row["ceiling_x"] > row["i_xf"] and row["saturation_x"] == pytest.approx(
            row["i_xf"] / row["ceiling_x"]
        )
        assert row["params"]["probe"]["folds"] == 3
    # the probe's I(Y;F) follows what the checkpoints learnt: the last one knows more than the first
    assert rows[-1]["i_yf"] > rows[0]["i_yf"]
    selected = select(rows)
    content = write_selection(str(tmp_path / "s.json"), traj, rows, selected, "infopro", "penultimate", {})
    assert content["sigma_sweep"] is None and content["verdict"]["verdict"] in {
        "clear pick",
        "weak preference",
        "cannot rank",
    }
    plot_selection(str(tmp_path / "s.png"), rows, selected, (0.0, 0.0), "infopro", content["verdict"])
    assert (tmp_path / "s.png").stat().st_size > 10_000
    only_y = score_trajectory(traj, batches, estimator="probe", progress=False)
    assert all(math.isnan(r["i_xf"]) and r["i_xf_norm"] == 0.0 for r in only_y)
    plot_selection(str(tmp_path / "p.png"), only_y, select(only_y), (0.0, 0.0), "probe")  # "not measured"

"""MI estimators (hf_ckd/mi.py, hf_ckd/mi_learned.py) against closed-form and numerically integrated values; docs/mi_estimators.md
quotes the errors these tests measure."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from hf_ckd.mi import (
    ESTIMATORS,
    MIN_SAMPLES,
    MIEstimate,
    estimate_mi,
    estimator_accepts,
    label_entropy,
    register_estimator,
)

KDE_FAMILY = ("kde", "kde_upper", "kde_lower")


def gaussian(n: int, variances: list[float], seed: int) -> torch.Tensor:
    """``[n, d]`` samples of N(0, diag(variances)), float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(variances), generator=g, dtype=torch.float64) * torch.tensor(variances).sqrt()


def two_class_1d(n: int, delta: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced classes, F | Y=c ~ N(±delta/2, 1) in one dimension."""
    y = torch.arange(n) % 2
    x = gaussian(n, [1.0], seed) + (2.0 * y[:, None] - 1.0) * delta / 2
    return x, y


def four_class_2d(n: int, delta: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced classes, F | Y=c ~ N(m_c, I) with the means on a square of side delta."""
    y = torch.arange(n) % 4
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    return gaussian(n, [1.0, 1.0], seed) + delta * corners[y], y


def two_class_ity(delta: float, variance: float) -> float:
    """I(T;Y) for T | Y=c ~ N(±delta/2, variance), balanced, by numerical integration (nats)."""
    sd = math.sqrt(variance)

    def density(t: float) -> float:
        return 0.5 * (stats.norm.pdf(t, -delta / 2, sd) + stats.norm.pdf(t, delta / 2, sd))

    lo, hi = -delta / 2 - 14 * sd, delta / 2 + 14 * sd
    h_t = integrate.quad(
        lambda t: -density(t) * math.log(density(t)) if density(t) > 0 else 0.0,
        lo,
        hi,
        points=[-delta / 2, delta / 2],
        limit=200,
        epsabs=1e-12,
    )[0]
    return h_t - 0.5 * math.log(2 * math.pi * math.e * variance)


# ---- closed form: I(X;T) of a Gaussian ---------------------------------------------------------------

SIGMA_X = [1.0, 2.0, 0.5]
NOISE = 0.5
TRUE_IXT = 0.5 * sum(math.log(1 + v / NOISE**2) for v in SIGMA_X)  # ½ log det(I + Σ/sigma²) = 2.4527


@pytest.fixture(scope="module")
def gaussian_estimates() -> dict[str, MIEstimate]:
    x = gaussian(2000, SIGMA_X, seed=101)
    y = torch.arange(2000) % 2
    return {
        name: estimate_mi(
            x, y, name, standardize=False, noise_std=NOISE, **({"mc_draws": 8} if name == "kde" else {})
        )
        for name in KDE_FAMILY
    }


def test_closed_form_gaussian_kde(gaussian_estimates):
    estimate = gaussian_estimates["kde"]
    assert abs(TRUE_IXT - 2.4527) < 1e-4
    # measured: -0.44 % (8 draws; -1.7 % mean over 5 other data seeds)
    assert abs(estimate.i_xf - TRUE_IXT) / TRUE_IXT < 0.05
    assert estimate.params["noise_std"] == NOISE
    assert estimate.params["standardize"] is False


def test_closed_form_gaussian_bounds(gaussian_estimates):
    lower, upper = gaussian_estimates["kde_lower"].i_xf, gaussian_estimates["kde_upper"].i_xf
    assert lower < TRUE_IXT < upper
    assert lower == pytest.approx(1.84, abs=0.1)  # measured 1.8439
    assert upper == pytest.approx(3.6, abs=0.15)  # measured 3.5924


# ---- class-conditional Gaussians: I(T;Y) -----------------------------------------------------------


@pytest.mark.parametrize("delta", [0.0, 1.0, 2.0, 4.0, 8.0])
def test_two_class_ity_matches_numerical_integration(delta):
    x, y = two_class_1d(2000, delta, seed=7)
    estimate = estimate_mi(x, y, "kde", standardize=False, noise_std=NOISE)
    truth = two_class_ity(delta, 1.0 + NOISE**2)  # T | Y ~ N(±Δ/2, 1 + sigma²)
    assert abs(estimate.i_yf - truth) < 0.02  # measured: at most 0.004 nats over these Δ


@pytest.mark.parametrize("name", KDE_FAMILY)
def test_four_class_ity_increases_with_separation(name):
    h_y = math.log(4)
    values = []
    for delta in [0.0, 1.0, 2.0, 4.0, 16.0]:
        x, y = four_class_2d(800, delta, seed=3)
        estimate = estimate_mi(x, y, name, standardize=False, noise_std=NOISE)
        assert estimate.ceiling_y == pytest.approx(h_y)
        assert estimate.i_yf <= h_y + 1e-9
        values.append(estimate.i_yf)
        if name == "kde":
            # the square's corners make Y two independent bits, each seen by one coordinate of T:
            # I(T;Y) = 2 x the 1-d two-class value at separation Δ
            assert abs(estimate.i_yf - 2 * two_class_ity(delta, 1.0 + NOISE**2)) < 0.04  # measured <= 0.031
    assert values == sorted(values)
    assert values[0] < 0.05  # identical classes; measured 0.016 (kde), 0.036 (upper), 0.007 (lower)
    assert values[-1] > 0.99 * h_y  # far-apart classes


def test_kde_terms_never_exceed_their_ceilings():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 20, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=g)
    for noise in [1e-3, 0.1, 1.0, 10.0]:
        for name in KDE_FAMILY:
            estimate = estimate_mi(features, labels, name, noise_std=noise)
            assert estimate.i_xf <= estimate.ceiling_x + 1e-9
            assert estimate.i_yf <= estimate.ceiling_y + 1e-9


def test_small_noise_saturates_even_on_label_free_features():
    """Failure mode 1 (docs/mi_estimators.md): with sigma far below the distances every point is its own cluster and both
    terms sit at their ceilings, although these features are independent of the labels."""
    g = torch.Generator().manual_seed(1)
    features = torch.randn(500, 64, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (500,), generator=g)
    saturated = estimate_mi(features, labels, "kde", noise_std_relative=0.05)
    assert min(saturated.saturation()) > 0.99
    default = estimate_mi(features, labels, "kde")  # sigma = 0.5 x median distance
    assert default.params["noise_std_relative"] == 0.5
    assert default.saturation()[0] < 0.2
    assert default.i_yf < 0.1


# ---- sigma rule, seeding, chunking, dtype ----------------------------------------------------------------


def test_relative_noise_is_scale_invariant():
    x, y = four_class_2d(300, 2.0, seed=5)
    base = estimate_mi(x, y, "kde", standardize=False, noise_std_relative=0.3)
    scaled = estimate_mi(10.0 * x + 3.0, y, "kde", standardize=False, noise_std_relative=0.3)
    assert scaled.params["noise_std"] == pytest.approx(10.0 * base.params["noise_std"])
    assert scaled.i_xf == pytest.approx(base.i_xf, abs=1e-10)
    assert scaled.i_yf == pytest.approx(base.i_yf, abs=1e-10)
    # standardisation removes a per-dimension rescaling
    stretched = x * torch.tensor([1.0, 50.0], dtype=torch.float64)
    a = estimate_mi(x, y, "kde_upper", standardize=True)
    b = estimate_mi(stretched, y, "kde_upper", standardize=True)
    assert b.i_xf == pytest.approx(a.i_xf, abs=1e-10)
    assert b.i_yf == pytest.approx(a.i_yf, abs=1e-10)


def test_params_record_both_noise_forms():
    x, y = four_class_2d(200, 1.0, seed=2)
    relative = estimate_mi(x, y, "kde")
    median = relative.params["median_distance"]
    assert relative.params["noise_std"] == pytest.approx(0.5 * median)
    assert set(relative.params) >= {
        "noise_std",
        "noise_std_relative",
        "median_distance",
        "standardize",
        "mc_draws",
    }
    absolute = estimate_mi(x, y, "kde_lower", noise_std=0.7)
    assert absolute.params["noise_std"] == 0.7
    assert absolute.params["noise_std_relative"] == pytest.approx(0.7 / absolute.params["median_distance"])


def test_kde_seeding():
    x, y = four_class_2d(300, 1.0, seed=4)
    first = estimate_mi(x, y, "kde", seed=3)
    assert estimate_mi(x, y, "kde", seed=3) == first
    other = estimate_mi(x, y, "kde", seed=4)
    assert other.i_xf != first.i_xf
    assert other.i_xf == pytest.approx(first.i_xf, abs=0.05)
    g = torch.Generator().manual_seed(11)
    with_generator = estimate_mi(x, y, "kde", generator=g)
    assert with_generator.params["seed"] is None
    assert with_generator.i_xf == pytest.approx(first.i_xf, abs=0.05)


@pytest.mark.parametrize("name", KDE_FAMILY)
def test_chunking_does_not_change_results(name):
    x, y = four_class_2d(250, 1.5, seed=6)
    full = estimate_mi(x, y, name, chunk_size=250)
    chunked = estimate_mi(x, y, name, chunk_size=7)
    default = estimate_mi(x, y, name)
    for other in (chunked, default):
        assert abs(other.i_xf - full.i_xf) < 1e-10
        assert abs(other.i_yf - full.i_yf) < 1e-10


def test_float32_and_numpy_inputs():
    x, y = four_class_2d(300, 1.5, seed=8)
    reference = estimate_mi(x, y, "kde_upper")
    single = estimate_mi(x.float(), y, "kde_upper", dtype="float32")
    assert single.params["dtype"] == "float32"
    assert single.i_xf == pytest.approx(reference.i_xf, abs=1e-4)
    assert single.i_yf == pytest.approx(reference.i_yf, abs=1e-4)
    from_numpy = estimate_mi(x.numpy(), y.numpy(), "kde_upper")
    assert from_numpy == reference


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = four_class_2d(300, 1.5, seed=9)
    for name in ("kde_upper", "kde_lower", "binning"):
        cpu = estimate_mi(x, y, name)
        gpu = estimate_mi(x.cuda(), y.cuda(), name)
        assert gpu.i_xf == pytest.approx(cpu.i_xf, abs=1e-8)
        assert gpu.i_yf == pytest.approx(cpu.i_yf, abs=1e-8)
    gpu_kde = estimate_mi(x.cuda(), y.cuda(), "kde")  # other noise stream: close, not equal
    assert gpu_kde.i_xf == pytest.approx(estimate_mi(x, y, "kde").i_xf, abs=0.05)


# ---- binning ---------------------------------------------------------------------------------------


def test_binning_saturates_at_log_n_in_high_dimension():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 100, generator=g)
    labels = torch.randint(0, 10, (400,), generator=g)  # unrelated to the features
    estimate = estimate_mi(features, labels, "binning")
    assert estimate.params == {"bins": 30}
    assert estimate.i_xf == pytest.approx(math.log(400), abs=1e-12)
    assert estimate.i_yf == pytest.approx(label_entropy(labels), abs=1e-12)
    assert estimate.saturation() == pytest.approx((1.0, 1.0), abs=1e-12)


def plug_in_entropy(symbols) -> float:
    counts = np.array(list(Counter(symbols).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_binning_matches_plug_in_entropy_on_discrete_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=500)
    features = np.stack([rng.integers(0, 4, size=500), (labels + rng.integers(0, 2, size=500)) % 4], axis=1)
    estimate = estimate_mi(features.astype(np.float32), labels, "binning", bins=4)  # one bin per value
    rows = [tuple(r) for r in features]
    h_t = plug_in_entropy(rows)
    h_t_given_y = sum(
        (labels == c).mean() * plug_in_entropy([r for r, label in zip(rows, labels) if label == c])
        for c in range(3)
    )
    assert estimate.i_xf == pytest.approx(h_t, abs=1e-12)
    assert estimate.i_yf == pytest.approx(h_t - h_t_given_y, abs=1e-12)
    one_bin = estimate_mi(features, labels, "binning", bins=1)
    assert (one_bin.i_xf, one_bin.i_yf) == pytest.approx((0.0, 0.0), abs=1e-12)


# ---- variational -----------------------------------------------------------------------------------


def test_variational_perfect_and_uniform_logits():
    labels = torch.tensor([0, 1, 2, 3] * 5 + [0] * 10)
    h_y = label_entropy(labels)
    perfect = estimate_mi(50.0 * torch.nn.functional.one_hot(labels, 4).double(), labels, "variational")
    assert math.isnan(perfect.i_xf)
    assert perfect.i_yf == pytest.approx(h_y, abs=1e-12)
    assert perfect.saturation()[1] == pytest.approx(1.0)
    uniform = estimate_mi(None, labels, "variational", logits=torch.zeros(30, 4))
    assert uniform.i_yf == 0.0  # H(Y) - log 4 < 0 for these unbalanced labels: clipped
    balanced = torch.arange(40) % 4
    assert estimate_mi(torch.zeros(40, 4), balanced, "variational").i_yf == pytest.approx(0.0, abs=1e-12)


def test_variational_equals_entropy_minus_cross_entropy():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=g)
    logits = torch.randn(200, 5, generator=g, dtype=torch.float64) + 3.0 * torch.nn.functional.one_hot(
        labels, 5
    )
    estimate = estimate_mi(logits, labels, "variational", temperature=2.0)
    ce = float(torch.nn.functional.cross_entropy(logits / 2.0, labels))
    assert estimate.i_yf == pytest.approx(label_entropy(labels) - ce, abs=1e-12)
    assert estimate.params == {"temperature": 2.0, "cross_entropy": pytest.approx(ce)}


# ---- registry and result ---------------------------------------------------------------------------


def test_registry():
    assert set(ESTIMATORS) >= {"kde", "kde_upper", "kde_lower", "binning", "variational"}
    assert set(ESTIMATORS) >= {
        "probe",
        "reconstruction",
        "infopro",
    }  # hf_ckd.mi_learned, registered by hf_ckd.mi
    assert estimator_accepts("infopro", "inputs") and not estimator_accepts("kde", "inputs")
    assert estimator_accepts("kde_lower", "noise_std_relative") and not estimator_accepts(
        "probe", "noise_std_relative"
    )
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("kde")(lambda features, labels: None)

    @register_estimator("_test_constant")
    def constant(features, labels, value: float = 0.25):
        return MIEstimate(value, value, "_test_constant", {"value": value}, 1.0, 1.0)

    try:
        x, y = four_class_2d(40, 1.0, seed=0)
        assert estimate_mi(x, y, "_test_constant", value=0.5).saturation() == (0.5, 0.5)
    finally:
        del ESTIMATORS["_test_constant"]


def test_default_estimator_and_ceilings():
    x, y = four_class_2d(120, 1.0, seed=1)
    estimate = estimate_mi(x, y)
    assert estimate.estimator == "kde"
    assert estimate.ceiling_x == pytest.approx(math.log(120))
    assert estimate.ceiling_y == pytest.approx(math.log(4))
    assert estimate.saturation() == (estimate.i_xf / math.log(120), estimate.i_yf / math.log(4))


# ---- bad input -------------------------------------------------------------------------------------

X40, Y40 = four_class_2d(40, 1.0, seed=0)
NAN_X = X40.clone()
NAN_X[3, 1] = float("nan")
INF_X = X40.clone()
INF_X[5, 0] = float("inf")


@pytest.mark.parametrize(
    ("features", "labels", "estimator", "params", "message"),
    [
        (X40, torch.zeros(40, dtype=torch.long), "kde", {}, "1 distinct class"),
        (X40[: MIN_SAMPLES - 1], Y40[: MIN_SAMPLES - 1], "kde", {}, f"at least {MIN_SAMPLES} samples"),
        (X40, Y40[:30], "kde", {}, "40 rows but labels have 30"),
        (X40[:, 0], Y40, "kde", {}, "2-d"),
        (X40, Y40[:, None], "kde", {}, "labels must be a 1-d"),
        (X40[:, :0], Y40, "kde", {}, "0 dimensions"),
        (X40, Y40.double(), "kde", {}, "integer class ids"),
        (NAN_X, Y40, "kde", {}, "NaN or Inf"),
        (INF_X, Y40, "binning", {}, "NaN or Inf"),
        (X40, Y40, "mine", {}, "Unknown MI estimator 'mine'.*'binning'.*'kde'"),
        (X40, Y40, "kde", {"noise_std": 0.0}, "noise_std must be a positive"),
        (X40, Y40, "kde_upper", {"noise_std": -1.0}, "noise_std must be a positive"),
        (X40, Y40, "kde_lower", {"noise_std": float("nan")}, "noise_std must be a positive"),
        (X40, Y40, "kde", {"noise_std_relative": 0}, "noise_std_relative must be a positive"),
        (X40, Y40, "kde", {"noise_std": 1.0, "noise_std_relative": 0.5}, "not both"),
        (X40, Y40, "kde", {"seed": 1, "generator": torch.Generator()}, "not both"),
        (X40, Y40, "kde", {"mc_draws": 0}, "mc_draws must be a positive integer"),
        (X40, Y40, "kde", {"chunk_size": 0}, "chunk_size must be a positive integer"),
        (X40, Y40, "kde", {"dtype": "float16"}, "dtype must be float64 or float32"),
        (X40, Y40, "kde", {"bins": 10}, r"unknown parameter\(s\) \['bins'\]"),
        (X40, Y40, "binning", {"bins": 0}, "bins must be a positive integer"),
        (X40, Y40, "binning", {"bins": -3}, "bins must be a positive integer"),
        (X40, Y40, "binning", {"bins": 2.5}, "bins must be a positive integer"),
        (X40, Y40 + 2, "variational", {}, r"labels in \[0, 2\)"),
        (X40, Y40, "variational", {"temperature": 0.0}, "temperature must be a positive"),
        (None, Y40, "variational", {}, "features are missing"),
    ],
)
def test_bad_input_raises(features, labels, estimator, params, message):
    with pytest.raises(ValueError, match=message):
        estimate_mi(features, labels, estimator, **params)


# ---- learned estimators: probe, reconstruction, infopro (hf_ckd/mi_learned.py) ---------------------


@pytest.mark.parametrize("noise_variance", [0.25, 1.0, 4.0])
def test_reconstruction_gaussian_channel_closed_form(noise_variance):
    """X ~ N(0, I_4), F = X + N(0, s² I): I(X;F) = ½ d log(1 + 1/s²), and the best linear decoder attains
    the bound (error covariance s² / (1 + s²) I), so the proxy is exact up to sampling error here."""
    d, n = 4, 2000
    x = gaussian(n, [1.0] * d, seed=21)
    f = x + math.sqrt(noise_variance) * gaussian(n, [1.0] * d, seed=22)
    estimate = estimate_mi(f, torch.arange(n) % 2, "reconstruction", inputs=x)
    truth = 0.5 * d * math.log(1 + 1 / noise_variance)  # 3.219, 1.386, 0.446
    # measured: +1.1 %, +1.0 %, -0.7 %
    assert abs(estimate.i_xf - truth) / truth < 0.04
    assert math.isnan(estimate.i_yf)
    assert estimate.ceiling_x == pytest.approx(0.5 * d * math.log(1 + 1e4))  # 4 directions at SNR 10^4
    assert estimate.params["components"] == d and estimate.params["explained_variance"] == pytest.approx(1.0)
    assert estimate.params["capped_directions"] == 0


def test_reconstruction_orders_features_by_what_they_keep():
    """F keeps the first m of 8 coordinates of X (plus noise of std 0.3) and pads with pure noise to 8
    dimensions: each kept coordinate is a Gaussian channel of ½ log(1 + 1/0.09) = 1.247 nats, the proxy
    rises strictly with m, and features independent of X score 0 (held out, there is nothing to fit)."""
    n, d = 1500, 8
    x = gaussian(n, [1.0] * d, seed=31)
    noise = gaussian(n, [1.0] * d, seed=32)
    labels = torch.arange(n) % 2
    values = []
    for m in [0, 2, 4, 8]:
        f = torch.cat([x[:, :m] + 0.3 * noise[:, :m], noise[:, m:]], dim=1)
        values.append(estimate_mi(f, labels, "reconstruction", inputs=x).i_xf)
    assert values == sorted(values) and len(set(values)) == 4
    assert values[0] < 0.05  # measured 0.0 (clipped)
    per_coordinate = 0.5 * math.log(1 + 1 / 0.09)
    for m, value in zip([2, 4, 8], values[1:]):
        assert value == pytest.approx(m * per_coordinate, rel=0.05)  # measured -1.4 %, +0.7 %, +0.1 %


def test_reconstruction_is_cross_fitted():
    """200 random feature dimensions for 300 examples let a decoder fit any X in sample; held out they
    reconstruct nothing."""
    x = gaussian(300, [1.0] * 4, seed=41)
    f = gaussian(300, [1.0] * 200, seed=42)
    estimate = estimate_mi(f, torch.arange(300) % 3, "reconstruction", inputs=x, ridge=1e-3)
    assert estimate.i_xf < 0.05  # measured 0.0 (clipped)
    assert estimate.params["relative_mse"] > 1.0  # worse than predicting the mean (measured 6.1)


def test_reconstruction_caps_exact_recovery_at_its_ceiling():
    """A deterministic F = X recovers every direction exactly: without the cap the proxy would be infinite
    (log 0); with it every direction is credited ½ log(1 + max_snr) and the estimate sits at its ceiling."""
    x = gaussian(500, [1.0, 2.0, 0.5], seed=51)
    labels = torch.arange(500) % 2
    exact = estimate_mi(x.clone(), labels, "reconstruction", inputs=x)
    assert exact.params["capped_directions"] == 3
    assert exact.i_xf == pytest.approx(exact.ceiling_x) and exact.saturation()[0] == pytest.approx(1.0)
    lower = estimate_mi(x.clone(), labels, "reconstruction", inputs=x, max_snr=100.0)
    assert lower.ceiling_x == pytest.approx(1.5 * math.log(101)) and lower.i_xf == pytest.approx(
        lower.ceiling_x
    )
    noisy = estimate_mi(x + gaussian(500, [1.0] * 3, seed=52), labels, "reconstruction", inputs=x)
    assert noisy.params["capped_directions"] == 0 and noisy.saturation()[0] < 0.15


@pytest.mark.parametrize("delta", [0.0, 1.0, 2.0, 4.0])
def test_probe_matches_two_class_integration(delta):
    """Balanced classes, F | Y ~ N(±Δ/2, 1): a logistic probe is the Bayes classifier's form, so H(Y) - CE
    reaches I(Y;F) (numerical integration) up to sampling error."""
    x, y = two_class_1d(4000, delta, seed=7)
    estimate = estimate_mi(x, y, "probe")
    truth = two_class_ity(delta, 1.0)  # 0, 0.111, 0.337, 0.633
    assert abs(estimate.i_yf - truth) < 0.02  # measured: at most 0.004 nats
    assert estimate.i_yf <= estimate.ceiling_y
    assert math.isnan(estimate.i_xf)
    assert estimate.params["folds"] == 5 and estimate.params["cross_entropy_se"] > 0


def test_probe_four_classes_matches_two_independent_bits():
    x, y = four_class_2d(4000, 2.0, seed=3)
    estimate = estimate_mi(x, y, "probe")
    truth = 2 * two_class_ity(2.0, 1.0)  # Y is two independent bits, each seen by one coordinate
    assert abs(estimate.i_yf - truth) < 0.03
    assert 0.7 < estimate.params["probe_accuracy"] < 0.8  # Φ(1)² = 0.708 for the Bayes classifier


def test_probe_cannot_memorise():
    """Label-free features with more dimensions than a fold has examples: in sample a classifier would be
    perfect (I = H(Y)); held out its cross-entropy exceeds H(Y) and the bound is clipped at 0."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 200, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (300,), generator=g)
    estimate = estimate_mi(features, labels, "probe")
    assert estimate.i_yf == 0.0
    assert estimate.params["cross_entropy"] > label_entropy(labels)  # measured 2.37 against 0.69


def test_infopro_is_reconstruction_plus_probe():
    x, y = four_class_2d(600, 2.0, seed=5)
    inputs = torch.cat([x, gaussian(600, [1.0], seed=6)], dim=1)
    both = estimate_mi(x, y, "infopro", inputs=inputs, folds=4, seed=2)
    assert both.i_xf == estimate_mi(x, y, "reconstruction", inputs=inputs, folds=4, seed=2).i_xf
    assert both.i_yf == estimate_mi(x, y, "probe", folds=4, seed=2).i_yf
    assert set(both.params) == {"reconstruction", "probe"}
    assert both.ceiling_x == estimate_mi(x, y, "reconstruction", inputs=inputs).ceiling_x


@pytest.mark.parametrize(
    ("estimator", "params", "message"),
    [
        ("reconstruction", {}, "needs the probe examples"),
        ("reconstruction", {"inputs": torch.zeros(40, 3, dtype=torch.long)}, "continuous inputs"),
        ("reconstruction", {"inputs": torch.zeros(39, 3)}, "one row per example"),
        ("reconstruction", {"inputs": torch.ones(40, 3)}, "constant"),
        ("reconstruction", {"inputs": X40, "components": 0}, "components must be a positive integer"),
        ("reconstruction", {"inputs": X40, "ridge": -1.0}, "ridge must be a positive"),
        ("reconstruction", {"inputs": X40, "max_snr": 0.0}, "max_snr must be a positive"),
        ("infopro", {}, "needs the probe examples"),
        ("probe", {"folds": 1}, "folds must be at least 2"),
        ("probe", {"regularization": 0.0}, "regularization must be a positive"),
        ("probe", {"inputs": X40}, r"unknown parameter\(s\) \['inputs'\]"),
    ],
)
def test_learned_estimators_bad_input(estimator, params, message):
    with pytest.raises(ValueError, match=message):
        estimate_mi(X40, Y40, estimator, **params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_learned_estimators_take_cuda_tensors():
    x, y = four_class_2d(400, 2.0, seed=9)
    inputs = torch.cat([x, gaussian(400, [1.0], seed=10)], dim=1)
    cpu = estimate_mi(x, y, "infopro", inputs=inputs)
    gpu = estimate_mi(x.cuda(), y.cuda(), "infopro", inputs=inputs.cuda())  # fitted on the CPU: the same
    assert (gpu.i_xf, gpu.i_yf) == pytest.approx((cpu.i_xf, cpu.i_yf), abs=1e-9)


def test_probe_needs_two_examples_per_class():
    labels = Y40.clone()
    labels[0] = 7  # a class seen once cannot be both trained on and held out
    with pytest.raises(ValueError, match="class 7 has 1"):
        estimate_mi(X40, labels, "probe")

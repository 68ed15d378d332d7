"""FID / KID / precision-recall in a classifier's feature space, the real-vs-real floor, extractors.

Real images: sklearn digits at 28 px through recogen's data registry. Features: a tiny classifier
trained here (tiny_options: 300 digits at 16 px, so the extractor also has to resize). Degraded
"generators" are the other real half blurred, shifted, or replaced by noise.
"""
from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_options
from recogen.errors import ConfigError, OfflineError, RunError
from recogen.metrics import generation as G

# KID's torchmetrics default is 100 subsets; 10 keep this file fast and are enough for orderings.
SUBSETS = 10


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory):
    from recogen.tasks import classify

    return classify.train(**tiny_options(tmp_path_factory.mktemp("genmetrics") / "clf"))


@pytest.fixture(scope="module")
def digits28() -> torch.Tensor:
    from recogen.data import DataOptions, create_dataset

    s = create_dataset("digits", DataOptions(image_size=28))
    return torch.cat([s.train.images, s.val.images, s.test.images])  # all 1,797, uint8 (N,1,28,28)


@pytest.fixture(scope="module")
def extractor(clf_run):
    return G.create_extractor(f"classifier:{clf_run}")


@pytest.fixture(scope="module")
def feats(digits28, extractor) -> dict[str, torch.Tensor]:
    """Features of real half A, and of half B as is, blurred, shifted, and of uniform noise."""
    from torchvision.transforms.v2 import functional as F

    a, b = G.split_halves(len(digits28), seed=0)
    B = digits28[b]
    noise = torch.randint(0, 256, B.shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    sets = {"A": digits28[a], "B": B, "blur": F.gaussian_blur(B, [7, 7], [1.5, 1.5]),
            "shift": torch.roll(B, (4, 4), dims=(2, 3)), "noise": noise}
    return {k: extractor.extract(v) for k, v in sets.items()}


def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The Fréchet distance written out (Heusel et al. 2017) with scipy's matrix square root."""
    from scipy import linalg

    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU units (constant 0) make the covariances singular
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ------------------------------------------------------------------------------------------ metrics
def test_fid_kid_order_real_blur_shift_noise(feats):
    m = {k: G.feature_metrics(feats["A"], feats[k], kid_subsets=SUBSETS) for k in ("B", "blur", "shift", "noise")}
    floor = m["B"]["fid"]
    # Measured (seed 0, this tiny classifier): floor 0.011, blur 0.21 (19x), shift 0.56 (51x),
    # noise 1.72 (157x). Thresholds keep a wide margin.
    assert m["blur"]["fid"] > 5 * floor
    assert m["shift"]["fid"] > 5 * floor
    assert m["noise"]["fid"] > 50 * floor
    assert m["noise"]["fid"] > m["blur"]["fid"]
    # KID: real ~0 (unbiased, measured -1e-5), blur 0.0038, shift 0.0059, noise 0.027.
    assert abs(m["B"]["kid_mean"]) < 0.1 * m["blur"]["kid_mean"]
    assert m["shift"]["kid_mean"] > 10 * abs(m["B"]["kid_mean"])
    assert m["noise"]["kid_mean"] > 3 * m["blur"]["kid_mean"]
    assert m["B"]["n_real"] == len(feats["A"]) and m["B"]["n_fake"] == len(feats["B"])


def test_precision_recall_real_vs_noise(feats):
    assert G.precision_recall(feats["A"], feats["A"]) == (1.0, 1.0)  # every sample is its own neighbour
    p, r = G.precision_recall(feats["A"], feats["B"])
    assert p > 0.75 and r > 0.75  # measured 0.91 / 0.90 for two real halves
    p, r = G.precision_recall(feats["A"], feats["noise"])
    assert p < 0.05 and r < 0.05  # measured 0.0 / 0.0


def test_precision_recall_knn_radii_by_hand():
    # Real points 0..9 on a line, k=3: radius of 0 is 3 (its 3rd neighbour), of 5 is 2.
    real = torch.arange(10.0).view(-1, 1)
    fake = torch.tensor([[0.5], [4.5], [100.0], [-50.0]])
    p, r = G.precision_recall(real, fake, k=3)
    assert p == 0.5  # 0.5 and 4.5 are inside real balls, 100 and -50 are not
    # Fake radii: 3rd neighbour of 0.5 is 100 (99.5 away), which covers all real points.
    assert r == 1.0
    # The edge: point 9's radius is 3 with k=3 (2 with k=2, 4 with k=4), so 11.9 is in and 12.5 out.
    p, _ = G.precision_recall(real, torch.tensor([[11.9], [12.5], [0.0], [5.0]]), k=3)
    assert p == 0.75
    p, r = G.precision_recall(real, real + 0.4, k=3)
    assert p == 1.0 and r == 1.0


def _pr_reference(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al.'s precision and recall written out with whole distance matrices, in float64."""
    real, fake = real.double(), fake.double()
    real_radii = torch.cdist(real, real).kthvalue(k + 1, dim=1).values  # the 0-th neighbour is the point itself
    fake_radii = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values
    precision = (torch.cdist(fake, real) <= real_radii[None]).any(1).double().mean()
    recall = (torch.cdist(real, fake) <= fake_radii[None]).any(1).double().mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("n_real, n_fake, dim, k, chunk", [
    (50, 57, 4, 3, 1024), (300, 300, 8, 3, 64), (700, 650, 16, 3, 100), (1500, 1507, 5, 3, 1024),
    (200, 180, 6, 1, 1024), (200, 230, 6, 5, 50),
])
def test_precision_recall_equals_the_definition_on_random_features(n_real, n_fake, dim, k, chunk):
    """torch-fidelity computes it (generated set first); the numbers are the definition's, bit for bit,
    whatever the chunk size, and float64 like the rest of metrics.json (not torch-fidelity's float32 mean)."""
    g = torch.Generator().manual_seed(n_real + k)
    real = torch.randn(n_real, dim, generator=g)
    fake = torch.randn(n_fake, dim, generator=g) * 1.2 + 0.1
    assert G.precision_recall(real, fake, k=k, chunk=chunk) == _pr_reference(real, fake, k)


def test_precision_recall_gives_the_previous_numbers():
    # What the hand-written k-NN version that torch-fidelity replaced returned for these features.
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(57, 4, generator=g) * 1.2 + 0.1
    assert G.precision_recall(real, fake) == (0.7719298245614035, 0.98)
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(1500, 5, generator=g), torch.randn(1507, 5, generator=g) * 1.2 + 0.1
    assert G.precision_recall(real, fake) == (0.8732581287325812, 0.9786666666666667)


def test_fid_matches_scipy(feats):
    for other in ("B", "blur", "noise"):
        ours = G.fid_from_features(feats["A"], feats[other])
        ref = scipy_fid(feats["A"].numpy(), feats[other].numpy())
        assert ours == pytest.approx(ref, rel=1e-3), other


def test_kid_is_seeded(feats):
    a = G.kid_from_features(feats["A"], feats["blur"], subset_size=100, subsets=SUBSETS, seed=3)
    b = G.kid_from_features(feats["A"], feats["blur"], subset_size=100, subsets=SUBSETS, seed=3)
    assert a == b and a["kid_subset_size"] == 100 and a["kid_std"] > 0  # subsets of 100 out of ~900 do vary
    c = G.kid_from_features(feats["A"], feats["blur"], subset_size=100, subsets=SUBSETS, seed=4)
    assert c["kid_mean"] != a["kid_mean"]
    whole = G.kid_from_features(feats["A"][:300], feats["blur"][:300])  # every subset would be the whole set
    assert whole["kid_subsets"] == 1 and whole["kid_subset_size"] == 300 and whole["kid_std"] == 0


# --------------------------------------------------------------------------------------- extractor
def test_classifier_features_batchwise_equal_whole(digits28, extractor):
    x = digits28[:100]
    whole = extractor.extract(x, batch_size=100)
    assert whole.shape == (100, extractor.num_features) and whole.dtype == torch.float64
    torch.testing.assert_close(extractor.extract(x, batch_size=7), whole, rtol=1e-5, atol=1e-6)


def test_classifier_features_are_the_head_input(digits28, extractor):
    """Features through the last Linear give the classifier's own probabilities: right layer, right scaling."""
    from torch import nn

    from recogen.data.base import resize_images
    from recogen.tasks.classify import predict_probs

    x = digits28[:50]
    head = [m for m in extractor.model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.inference_mode():
        probs = head(extractor.extract(x).float()).softmax(1)
    ref = predict_probs(extractor.model, extractor.card, resize_images(x, extractor.card["image_size"]))
    torch.testing.assert_close(probs, ref, rtol=1e-4, atol=1e-5)
    assert extractor.card["image_size"] == 16 and extractor.name.startswith("classifier:")


def test_generation_metrics_and_floor_on_images(digits28, extractor):
    a, b = G.split_halves(len(digits28), seed=0)
    m = G.generation_metrics(digits28[a], digits28[b], extractor, kid_subset_size=200, kid_subsets=SUBSETS)
    assert m["features"] == extractor.name and m["n_real"] == len(a) and m["n_fake"] == len(b)
    floor = G.real_floor(digits28, extractor, seed=0, kid_subset_size=200, kid_subsets=SUBSETS)
    # The floor with seed 0 is exactly these two halves.
    assert floor["fid"] == pytest.approx(m["fid"], rel=1e-6) and floor["n_real"] + floor["n_fake"] == len(digits28)
    other = G.real_floor(digits28, extractor, seed=1, kid_subset_size=200, kid_subsets=SUBSETS)
    assert other["fid"] != floor["fid"]


def test_evaluate_generator(digits28, extractor):
    a, b = G.split_halves(len(digits28), seed=0)
    held_out, pool = digits28[a], digits28[b]

    def real_sampler(n, seed):  # a "perfect generator": unseen real digits
        return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]

    def noise_sampler(n, seed):
        return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)

    good = G.evaluate_generator(real_sampler, held_out, extractor, n=400, seed=0, kid_subsets=SUBSETS)
    keys = {"fid", "kid_mean", "kid_std", "precision", "recall", "fid_floor", "kid_floor", "fid_ratio",
            "n_fake", "n_real", "features"}
    assert keys <= set(good) and good["n_fake"] == 400 and good["n_real"] == 400 and good["n_floor"] == 200
    json.dumps(good)
    bad = G.evaluate_generator(noise_sampler, held_out, extractor, n=400, seed=0, kid_subsets=SUBSETS)
    # Measured (seed 0): real sampler fid_ratio 1.04, noise 35.9. A full-size FID over
    # the half-size floor would have given the real sampler 0.50 (FID's 1/N bias): fid_ratio avoids it.
    assert 0.5 < good["fid_ratio"] < 2.0
    assert good["fid"] < good["fid_floor"]  # that bias, visible
    assert bad["fid_ratio"] > 10
    assert bad["precision"] < 0.05 and good["precision"] > 0.75
    again = G.evaluate_generator(real_sampler, held_out, extractor, n=400, seed=0, kid_subsets=SUBSETS)
    assert {k: v for k, v in again.items() if k != "sample_seconds"} == {k: v for k, v in good.items() if k != "sample_seconds"}


def test_extractor_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="inception"):
        G.create_extractor("inseption")
    with pytest.raises(ConfigError, match="classifier:RUN"):
        G.create_extractor("classifier")
    with pytest.raises(RunError):
        G.create_extractor(f"classifier:{tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="--features-weights is for --features inception"):
        G.create_extractor(f"classifier:{tmp_path}", weights_path=tmp_path / "w.pth")


def test_classifier_extractor_refuses_a_run_of_another_task(clf_run, tmp_path):
    import shutil

    other = tmp_path / "gen"
    other.mkdir()
    shutil.copy(clf_run / "model.safetensors", other / "model.safetensors")
    card = json.loads((clf_run / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**card, "task": "generate"}))
    with pytest.raises(RunError, match=f"^{other} holds a generate model, not a classifier$"):
        G.create_extractor(f"classifier:{other}")


# --------------------------------------------------------------------------------------- inception
def _block_network(monkeypatch):
    import socket

    def refuse(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_inception_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    _block_network(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as e:
        G.create_extractor("inception")
    assert time.perf_counter() - t0 < 3.0
    msg = str(e.value)
    assert G.INCEPTION_FILE in msg and "--features-weights PATH" in msg and str(tmp_path / "torch") in msg
    with pytest.raises(ConfigError, match="no such file"):
        G.create_extractor("inception", weights_path=tmp_path / "missing.pth")


def test_inception_url_is_torch_fidelitys():
    tf = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    assert G.INCEPTION_URL == tf.URL_INCEPTION_V3


def test_inception_from_weights_path_and_cache(tmp_path, monkeypatch, digits28):
    """Random Inception weights (the real ones need the network) through --features-weights and the cache."""
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as m:  # build the net without loading weights, to save its random ones
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        sd = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).state_dict()
    path = tmp_path / "inception.pth"
    torch.save(sd, path)
    _block_network(monkeypatch)
    ex = G.create_extractor("inception", weights_path=path)
    f = ex.extract(digits28[:3], batch_size=2)
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and ex.name.startswith("inception")
    torch.testing.assert_close(ex.extract(digits28[:3], batch_size=3), f)
    # A file in torch's hub cache is found with the network blocked.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / G.INCEPTION_FILE).write_bytes(path.read_bytes())
    assert G.inception_weights() == cache / G.INCEPTION_FILE


def test_precision_recall_use_equal_set_sizes(feats):
    """FID/KID use every sample; precision/recall a seeded subset of the larger set, as large as the smaller."""
    m = G.feature_metrics(feats["A"], feats["B"][:300], kid_subsets=SUBSETS)
    assert (m["n_real"], m["n_fake"], m["n_pr"]) == (len(feats["A"]), 300, 300)
    sub = feats["A"][torch.randperm(len(feats["A"]), generator=torch.Generator().manual_seed(0))[:300]]
    assert (m["precision"], m["recall"]) == G.precision_recall(sub, feats["B"][:300])
    assert m["fid"] == pytest.approx(G.fid_from_features(feats["A"], feats["B"][:300]))


def test_evaluate_generator_with_fewer_real_images_than_samples(digits28, extractor):
    a, b = G.split_halves(len(digits28), seed=0)
    pool = digits28[b]

    def real_sampler(n, seed):
        return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]

    m = G.evaluate_generator(real_sampler, digits28[a][:150], extractor, n=400, seed=0, kid_subsets=SUBSETS)
    assert (m["n_fake"], m["n_real"], m["n_pr"]) == (400, 150, 150)
    assert m["precision"] > 0.6 and m["recall"] > 0.6

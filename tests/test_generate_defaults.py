"""Generation defaults that matter on real data: class-conditional models for labelled data, the VAE's
fitted latent prior, the class mix of samples, and the ddpm's Min-SNR loss weighting.

The figures that chose them (mnist-5k, independent judge) are in BENCHMARKS.md; these tests check the
mechanisms, with tiny models and controlled latents, so a broken fit, draw or rule fails here.
"""
from __future__ import annotations


import pytest
import torch

from recogen.config import GenerateConfig
from recogen.data import DataOptions, ImageSet, ImageSplits, create_dataset
from recogen.errors import ConfigError
from recogen.models import create_model
from recogen.tasks.generate.recipe import resolve_defaults
from recogen.tasks.generate.sampling import default_labels


def _vae(conditional: bool, latent: int = 2, components: int = 2):
    torch.manual_seed(0)
    return create_model("vae", num_classes=3, in_chans=1, image_size=16, width=4, latent_dim=latent,
                        conditional=conditional, prior="gmm", prior_components=components).eval()


def _fake_encoder(model, mus: torch.Tensor):
    """Make ``model.encode`` return ``mus`` (one row per image, in order) instead of the network's latents."""
    it = iter(mus.split(512))

    def encode(x, y=None):
        m = next(it)
        assert len(m) == len(x)
        return m, torch.zeros_like(m)

    model.encode = encode


def test_an_unfitted_gmm_prior_is_the_standard_normal():
    m = _vae(False)
    plain = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    z = m._prior_latents(5, None, torch.Generator().manual_seed(3))
    assert torch.equal(z, plain)


def test_gmm_prior_fits_two_clusters_of_latents():
    g = torch.Generator().manual_seed(0)
    n = 400
    centres = torch.tensor([[-4.0, 0.0], [4.0, 2.0]])
    which = torch.arange(n) % 2
    mus = centres[which] + 0.3 * torch.randn(n, 2, generator=g)
    m = _vae(False)
    _fake_encoder(m, mus)
    m.fit_prior(torch.zeros(n, 1, 16, 16, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), seed=0)
    z = m._prior_latents(2000, None, torch.Generator().manual_seed(1))
    near = torch.cdist(z, centres).argmin(1)
    share = float((near == 0).float().mean())
    # Half the draws near each centre, each as tight as the data (0.3 per axis), nothing in between.
    assert 0.45 < share < 0.55
    spread = (z - centres[near]).std(0)
    assert torch.all(spread > 0.2) and torch.all(spread < 0.4)
    assert float(torch.cdist(z, centres).min(1).values.max()) < 2.0


def test_conditional_gmm_prior_is_fitted_per_class():
    n = 300
    labels = torch.arange(n) % 3
    mus = torch.stack([labels.float() * 10, -labels.float() * 10], 1) + 0.1 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    m = _vae(True)
    _fake_encoder(m, mus)
    m.fit_prior(torch.zeros(n, 1, 16, 16, dtype=torch.uint8), labels, seed=0)
    for k in range(3):
        z = m._prior_latents(200, torch.full((200,), k), torch.Generator().manual_seed(k))
        assert torch.allclose(z.mean(0), torch.tensor([10.0 * k, -10.0 * k]), atol=0.1)
    with pytest.raises(ConfigError, match="given classes"):
        m.sample(4, generator=torch.Generator())
    assert m.sample(4, generator=torch.Generator(), labels=torch.tensor([0, 1, 2, 0])).shape == (4, 1, 16, 16)


def test_conditional_vae_reconstructs_without_labels_under_its_best_class():
    m = _vae(True)
    x = torch.rand(6, 1, 16, 16)
    best = m.best_labels(x)
    assert torch.equal(m.reconstruct(x), m.reconstruct(x, best))
    with pytest.raises(ConfigError, match="unknown VAE prior"):
        create_model("vae", num_classes=3, in_chans=1, image_size=16, prior="flow")


def test_samples_without_a_class_follow_the_training_class_mix():
    class M:  # what default_labels reads of a model
        conditional, num_classes = True, 3

    assert torch.equal(default_labels(M, 7), torch.arange(7) % 3)  # no mix known: classes in turn
    assert torch.equal(default_labels(M, 6, [5, 5, 5]), torch.arange(6) % 3)  # equal classes: in turn (grid columns)
    counts = torch.bincount(default_labels(M, 1000, [600, 300, 100]), minlength=3)
    assert counts.tolist() == [600, 300, 100]
    counts = torch.bincount(default_labels(M, 10, [1, 1, 8]), minlength=3)
    assert counts.tolist() == [1, 1, 8]
    M.conditional = False
    assert default_labels(M, 5, [1, 2, 3]) is None


@pytest.fixture(scope="module")
def digits():
    return create_dataset("digits", DataOptions(image_size=16))


@pytest.mark.parametrize("model,expected", [("vae", True), ("ddpm", True), ("dcgan", False)])
def test_labelled_data_trains_conditional_vae_and_ddpm(digits, model, expected):
    cfg, why = resolve_defaults(GenerateConfig(data="digits", model=model, budget="none", epochs=1), digits)
    assert cfg.conditional is expected and cfg.model_kwargs["conditional"] is expected
    assert any(("conditional" in w) for w in why)
    if model == "vae":
        assert cfg.model_kwargs["prior"] == "gmm"
    # Asked for, either way wins over the default.
    cfg, _ = resolve_defaults(GenerateConfig(data="digits", model=model, budget="none", epochs=1,
                                             conditional=not expected), digits)
    assert cfg.conditional is (not expected)


def test_one_class_data_trains_an_unconditional_model(digits):
    one = ImageSplits(name="one", classes=["only"], train=ImageSet(digits.train.images, torch.zeros_like(digits.train.labels)),
                      val=ImageSet(digits.val.images, torch.zeros_like(digits.val.labels)))
    cfg, why = resolve_defaults(GenerateConfig(data="one", model="vae", budget="none", epochs=1), one)
    assert cfg.conditional is False and "unconditional" in why
    with pytest.raises(ConfigError, match="unknown --prior"):
        resolve_defaults(GenerateConfig(data="one", model="vae", budget="none", epochs=1, prior="flow"), one)
    with pytest.raises(ConfigError, match="does not apply to dcgan"):
        resolve_defaults(GenerateConfig(data="one", model="dcgan", budget="none", epochs=1, prior="gmm"), one)


def test_min_snr_weighting_lowers_the_weight_of_low_noise_steps():
    def loss(gamma: float) -> float:
        torch.manual_seed(0)
        m = create_model("ddpm", num_classes=2, in_chans=1, image_size=16, width=8, snr_gamma=gamma)
        torch.manual_seed(1)
        return float(m.phase_loss("model", torch.rand(32, 1, 16, 16), torch.zeros(32, dtype=torch.long))[0].detach())

    plain, huge, weighted = loss(0.0), loss(1e12), loss(5.0)
    assert huge == pytest.approx(plain, rel=1e-6)  # min(SNR, gamma) / SNR = 1 everywhere
    assert weighted < plain * 0.95  # 32 random steps include low-noise ones (SNR > 5), now down-weighted


def test_v_prediction_trains_on_v_and_its_samplers_read_it():
    from recogen.models.generators.diffusion import SAMPLERS

    torch.manual_seed(0)
    m = create_model("ddpm", num_classes=2, in_chans=1, image_size=16, width=8, prediction="v_prediction")
    x0, noise = torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 1, 16, 16)
    a = m.alphas_cumprod[torch.tensor([0, 300, 700, 999])].view(-1, 1, 1, 1)
    v = m._target(x0, noise, a)
    # v = sqrt(a) eps - sqrt(1 - a) x0: from x_t and v, x0 = sqrt(a) x_t - sqrt(1 - a) v (Salimans & Ho).
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * v, x0, atol=1e-5)
    for name, build in SAMPLERS.items():
        assert build(m.scheduler.config).config.prediction_type == "v_prediction", name
    eps = create_model("ddpm", num_classes=2, in_chans=1, image_size=16, width=8)
    assert torch.equal(eps._target(x0, noise, a), noise)
    with pytest.raises(ConfigError, match="unknown ddpm prediction"):
        create_model("ddpm", num_classes=2, in_chans=1, image_size=16, width=8, prediction="x0")


def test_a_near_equal_class_mix_still_comes_in_turn():
    class M:
        conditional, num_classes = True, 3

    labels = default_labels(M, 9, [30, 31, 29])
    assert torch.bincount(labels, minlength=3).tolist() == [3, 3, 3]
    assert all(len(set(labels[i : i + 3].tolist())) == 3 for i in range(0, 9, 3))  # every row of 3 has each class

"""Generation quality in an explicit feature space: FID, KID, precision/recall and the real-vs-real floor.

A generated set is only measured against real images *through a feature extractor*, and the numbers
mean nothing without it, the sample counts and the floor (FID between two disjoint halves of the real
set: what a perfect generator would score at that sample size). Everything returned here carries them.

Extractors come from a registry (``--features NAME[:ARG]``):

- ``classifier:RUN`` -- the penultimate layer of a recogen classification run (the usual practice
  for MNIST-like data, where ImageNet Inception features say little);
- ``inception`` -- torch-fidelity's Inception-v3 (the 2048-d pool features of the reference FID),
  weights from torch's hub cache or ``--features-weights PATH``; offline it fails at once.

>>> from recogen.metrics.generation import evaluate_generator
>>> m = evaluate_generator(sample_fn, real_uint8, "classifier:runs/classify/digits", n=1000)
>>> m["fid"], m["fid_floor"], m["fid_ratio"]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, DataError, ModelError, OfflineError, RunError
from ..registry import Registry

EXTRACTORS: Registry = Registry("feature extractor", error=ConfigError)

# torch-fidelity's converted TF Inception weights (torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3);
# repeated here so the offline check needs neither the package nor the network.
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
PR_K = 3  # Kynkäänniemi et al. 2019 use k=3 for the k-NN radii


# ------------------------------------------------------------------------------------ extractors
class FeatureExtractor(nn.Module):
    """uint8 images (N, C, H, W) of any size and 1 or 3 channels -> features (N, num_features).

    ``name`` is what metrics.json records; ``num_features`` is what torchmetrics asks of a custom
    feature module.
    """

    name: str = "?"
    num_features: int = 0

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features of a whole uint8 set, in batches; float64 on the CPU (FID needs the precision)."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be uint8 (N,C,H,W), got {images.dtype} {tuple(images.shape)}")
        dev = next(self.parameters()).device
        out = [self(images[i : i + batch_size].to(dev)).double().cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_features, dtype=torch.float64)


class ClassifierFeatures(FeatureExtractor):
    """The input of a classifier's last ``nn.Linear`` (its penultimate features), caught by a hook.

    Images are fitted to the card's size and channels and normalised with the card's mean and std,
    exactly as the classifier was trained, so the features are the ones it learned.
    """

    def __init__(self, model: nn.Module, card: dict[str, Any], name: str):
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError(f"{name}: the classifier has no nn.Linear head to take features from; use --features inception")
        head = linears[-1]  # every registered classifier ends in one (seed CNNs, ResNet fc, timm heads, cnn-rnn)
        self.model, self.card, self.name = model.eval(), card, name
        self.num_features = int(head.in_features)
        self.size, self.chans = int(card["image_size"]), int(card["in_chans"])
        self.register_buffer("mean", torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1), persistent=False)
        self._caught: torch.Tensor | None = None
        head.register_forward_pre_hook(self._catch)

    def _catch(self, module, args):
        self._caught = args[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from ..data.base import convert_channels, resize_images

        x = convert_channels(resize_images(images, self.size), self.chans)
        x = (x.float().div_(255) - self.mean) / self.std
        self.model(x)
        feats, self._caught = self._caught, None
        return feats.flatten(1).float()


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's Inception-v3 through torchmetrics' wrapper: 2048-d pool features at 299 px."""

    num_features = 2048

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.net, self.name = net, name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from ..data.base import convert_channels

        return self.net(convert_channels(images, 3))


@EXTRACTORS.register("classifier", description="penultimate features of a recogen classifier run: classifier:RUN")
def classifier_extractor(arg: str | None, *, weights_path: str | Path | None = None, device: str = "cpu") -> FeatureExtractor:
    if not arg:
        raise ConfigError("--features classifier needs a run: --features classifier:RUN (a recogen classify run folder)")
    if weights_path is not None:
        raise ConfigError("--features-weights is for --features inception; a classifier run carries its own weights")
    from ..artifact import load_portable

    model, card = load_portable(arg, device)  # RunError when RUN is missing or damaged
    if card.get("task") != "classify":
        raise RunError(f"{arg} holds a {card.get('task')} model, not a classifier")
    return ClassifierFeatures(model, card, name=f"classifier:{arg}").to(device)


@EXTRACTORS.register("inception", description="torch-fidelity Inception-v3 pool features (2048-d), the reference FID")
def inception_extractor(arg: str | None, *, weights_path: str | Path | None = None, device: str = "cpu") -> FeatureExtractor:
    path = inception_weights(weights_path)
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        import torch_fidelity  # noqa: F401  (NoTrainInceptionV3 is an empty shell without it)
    except ImportError:
        raise ConfigError("--features inception needs torch-fidelity: pip install torch-fidelity "
                          "(or use --features classifier:RUN)") from None
    from ..models.weights import read_state_dict

    # torch-fidelity reads the file with torch.load(weights_only=False); check first with the safe
    # reader that it holds nothing but tensors, so no code can be unpickled.
    read_state_dict(path)
    # antialias=False: TF1-compatible bilinear resize, as torch-fidelity and the published FID numbers.
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path), antialias=False)
    return InceptionFeatures(net, name="inception-v3-compat:2048").to(device)


def inception_weights(weights_path: str | Path | None = None, timeout: float = 3.0) -> Path:
    """The Inception weights file: ``weights_path``, else torch's hub cache, else downloaded into it.

    Offline, raises OfflineError within ``timeout`` seconds naming the file to place and the option.
    """
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise ConfigError(f"--features-weights {p}: no such file; pass the Inception weights ({INCEPTION_FILE})")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return cached
    offline = (f"cannot download the Inception weights for --features inception (offline?). Place {INCEPTION_FILE} "
               f"(from {INCEPTION_URL}) at {cached}, or pass --features-weights PATH")
    import socket
    from urllib.parse import urlparse

    # A quick connect first: an unreachable network then fails in seconds, not after urllib's long wait.
    try:
        socket.create_connection((urlparse(INCEPTION_URL).hostname, 443), timeout=timeout).close()
    except OSError:
        raise OfflineError(offline) from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), hash_prefix=INCEPTION_FILE.rsplit("-", 1)[1][:8])
    except Exception:  # URLError, OSError, hash mismatch on a cut-off download
        raise OfflineError(offline) from None
    return cached


def create_extractor(spec: str | FeatureExtractor, *, weights_path: str | Path | None = None,
                     device: str = "cpu") -> FeatureExtractor:
    """Build the extractor for ``spec`` (``"classifier:RUN"`` or ``"inception"``); an extractor passes through.

    >>> ex = create_extractor("classifier:runs/classify/digits")
    >>> ex.extract(images).shape   # (N, ex.num_features)
    """
    if isinstance(spec, FeatureExtractor):
        return spec
    name, sep, arg = str(spec).partition(":")
    return EXTRACTORS.get(name.strip()).fn(arg if sep else None, weights_path=weights_path, device=device)


def list_extractors() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered feature extractor."""
    return [(e.name, e.meta.get("description", "")) for e in EXTRACTORS]


# ------------------------------------------------------------------------------- feature metrics
class _Given(nn.Module):
    """The torchmetrics ``feature`` module for features computed already (extract once, measure many)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics FrechetInceptionDistance)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _need(real, fake, 2, "FID")
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, *, subset_size: int | None = None,
                      subsets: int = 100, seed: int = 0) -> dict[str, Any]:
    """KID (polynomial-kernel MMD², torchmetrics KernelInceptionDistance) over seeded random subsets.

    Returns ``{kid_mean, kid_std, kid_subset_size, kid_subsets}``. ``subset_size`` defaults to
    min(1000, both counts) as torch-fidelity; when it equals both counts every subset is the whole
    set, so one is computed (and the std is 0).
    """
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    _need(real, fake, 2, "KID")
    size = min(1000, len(real), len(fake)) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(len(real), len(fake)):
        raise ConfigError(f"KID subset size {size} must be between 2 and the smaller sample count "
                          f"({min(len(real), len(fake))}); lower it or draw more samples")
    if size == len(real) == len(fake):
        subsets = 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # the subsets come from torch.randperm: seed them, leave the caller's RNG
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return {"kid_mean": float(mean), "kid_std": float(std), "kid_subset_size": size, "kid_subsets": subsets}


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real`` features.

    Each set's manifold is the union of balls around its samples, radius the distance to the k-th
    nearest neighbour in the same set. Precision: share of fake samples inside the real manifold
    (are samples realistic?); recall: share of real samples inside the fake manifold (is the variety
    covered?). Computed by torch-fidelity (``metric_prc``, generated set first) in float64, ``chunk``
    x N distances at a time.
    """
    _need(real, fake, k + 1, f"precision/recall with k={k}")
    try:
        from torch_fidelity.metric_prc import prc_features_to_metric
    except ImportError:
        raise ConfigError("precision/recall needs torch-fidelity 0.4 or later: pip install -U torch-fidelity") from None

    real, fake = real.double(), fake.double()
    out = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=chunk, save_cpu_ram=True, verbose=False)
    # torch-fidelity averages the 0/1 hits in float32; the counts are exact, so report count / n in float64.
    return round(out["precision"] * len(fake)) / len(fake), round(out["recall"] * len(real)) / len(real)


def _need(real: torch.Tensor, fake: torch.Tensor, n: int, what: str) -> None:
    if len(real) < n or len(fake) < n:
        raise DataError(f"{what} needs at least {n} real and {n} generated samples, got {len(real)} and {len(fake)}")


def _first_of_seeded(x: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    # A seeded random subset of m rows (all of x, in order, when it has no more than m).
    if len(x) <= m:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:m]]


def feature_metrics(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int | None = None,
                    kid_subsets: int = 100, k: int = PR_K, seed: int = 0) -> dict[str, Any]:
    """FID, KID, precision and recall of two feature sets (N, D) and (M, D), with the counts.

    FID and KID use every sample. Precision and recall use ``n_pr`` = min(N, M) of each (a seeded
    subset of the larger set): their k-NN radii shrink as a set grows, so sets of unequal size would
    tilt precision against recall.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DataError(f"feature sets must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    kid = kid_from_features(real, fake, subset_size=kid_subset_size, subsets=kid_subsets, seed=seed)
    m = min(len(real), len(fake))
    precision, recall = precision_recall(_first_of_seeded(real, m, seed), _first_of_seeded(fake, m, seed + 1), k)
    return {"fid": fid_from_features(real, fake), "kid_mean": kid["kid_mean"], "kid_std": kid["kid_std"],
            "precision": precision, "recall": recall, "n_real": len(real), "n_fake": len(fake), "n_pr": m,
            "kid_subset_size": kid["kid_subset_size"], "kid_subsets": kid["kid_subsets"], "pr_k": k}


def split_halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint seeded index halves of ``range(n)`` (the odd one out goes to the first)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = (n + 1) // 2
    return perm[:half], perm[half:]


# ------------------------------------------------------------------------------------- public API
def generation_metrics(real: torch.Tensor, fake: torch.Tensor, extractor: str | FeatureExtractor, *,
                       kid_subset_size: int | None = None, kid_subsets: int = 100, k: int = PR_K,
                       seed: int = 0, batch_size: int = 256, weights_path: str | Path | None = None,
                       device: str = "cpu") -> dict[str, Any]:
    """FID, KID, precision/recall of uint8 images ``fake`` (M,C,H,W) against ``real`` (N,C,H,W).

    Returns ``{fid, kid_mean, kid_std, precision, recall, n_real, n_fake, n_pr, kid_subset_size, kid_subsets,
    pr_k, features}`` where ``features`` names the extractor.

    >>> generation_metrics(real, fake, "classifier:runs/classify/digits")["fid"]
    """
    ex = create_extractor(extractor, weights_path=weights_path, device=device)
    out = feature_metrics(ex.extract(real, batch_size), ex.extract(fake, batch_size),
                          kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, k=k, seed=seed)
    return {**out, "features": ex.name}


def real_floor(real: torch.Tensor, extractor: str | FeatureExtractor, *, seed: int = 0,
               kid_subset_size: int | None = None, kid_subsets: int = 100, k: int = PR_K, batch_size: int = 256,
               weights_path: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """The same metrics between two disjoint seeded halves of ``real``: the score of a perfect generator.

    Keys as :func:`generation_metrics`; ``n_real``/``n_fake`` are the two half sizes.
    """
    ex = create_extractor(extractor, weights_path=weights_path, device=device)
    feats = ex.extract(real, batch_size)
    a, b = split_halves(len(feats), seed)
    return {**feature_metrics(feats[a], feats[b], kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                                      k=k, seed=seed), "features": ex.name}


def evaluate_generator(sample_fn: Callable[[int, int], torch.Tensor], real_images: torch.Tensor,
                       extractor_spec: str | FeatureExtractor, n: int = 1000, seed: int = 0, *,
                       weights_path: str | Path | None = None, device: str = "cpu", batch_size: int = 256,
                       kid_subset_size: int | None = None, kid_subsets: int = 100, k: int = PR_K) -> dict[str, Any]:
    """Measure a generator: ``sample_fn(n, seed)`` -> uint8 (n,C,H,W) against ``real_images`` (held out).

    Uses a seeded subset of at most ``n`` real images. Returns a dict for metrics.json:
    ``fid, kid_mean, kid_std`` (n fakes vs the real images), ``precision, recall`` (on ``n_pr`` =
    min(n, real) images of each: equal set sizes), ``fid_floor,
    kid_floor, kid_floor_std, precision_floor, recall_floor`` (real half vs real half),
    ``fid_matched`` (FID at the floor's sample counts: the two fake halves against the two real
    halves, averaged), ``fid_ratio`` (fid_matched / fid_floor: ~1 for a perfect generator, free of
    FID's sample-size bias), ``n_fake, n_real, n_pr, n_floor, features, kid_subset_size, kid_subsets, pr_k,
    seed, sample_seconds``.

    >>> m = evaluate_generator(lambda n, s: gen.sample(n, seed=s), test_images, "classifier:runs/classify/digits")
    """
    if real_images.dtype != torch.uint8 or real_images.ndim != 4:
        raise DataError(f"real images must be uint8 (N,C,H,W), got {real_images.dtype} {tuple(real_images.shape)}")
    ex = create_extractor(extractor_spec, weights_path=weights_path, device=device)
    g = torch.Generator().manual_seed(seed)
    real = real_images[torch.randperm(len(real_images), generator=g)[:n]] if len(real_images) > n else real_images
    t0 = time.perf_counter()
    fake = sample_fn(n, seed)
    sample_s = time.perf_counter() - t0
    if not isinstance(fake, torch.Tensor) or fake.dtype != torch.uint8 or fake.ndim != 4 or len(fake) != n:
        got = f"{fake.dtype} {tuple(fake.shape)}" if isinstance(fake, torch.Tensor) else type(fake).__name__
        raise ValueError(f"sample_fn({n}, {seed}) must return uint8 ({n},C,H,W) images, got {got}")

    real_f, fake_f = ex.extract(real, batch_size), ex.extract(fake, batch_size)
    opts = dict(kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, k=k, seed=seed)
    m = feature_metrics(real_f, fake_f, **opts)
    a, b = split_halves(len(real_f), seed)
    floor = feature_metrics(real_f[a], real_f[b], **opts)
    # FID is biased upwards by ~1/N, so the half-size floor is inflated against a full-size FID (a
    # perfect generator scored 0.5x the floor on digits). The ratio therefore uses FID at the floor's
    # counts: fake halves against the real halves (n_fake >= n_real here), averaged like a mirror.
    fa, fb = fake_f[: len(a)], fake_f[len(a) : len(a) + len(b)]
    fid_matched = 0.5 * (fid_from_features(real_f[a], fa) + fid_from_features(real_f[b], fb))
    return {
        "fid": m["fid"], "kid_mean": m["kid_mean"], "kid_std": m["kid_std"],
        "precision": m["precision"], "recall": m["recall"],
        "fid_floor": floor["fid"], "kid_floor": floor["kid_mean"], "kid_floor_std": floor["kid_std"],
        "precision_floor": floor["precision"], "recall_floor": floor["recall"],
        # None rather than inf: a zero floor means duplicated real images, and JSON has no inf.
        "fid_ratio": fid_matched / floor["fid"] if floor["fid"] > 0 else None,
        "fid_matched": fid_matched,
        "n_fake": len(fake_f), "n_real": len(real_f), "n_pr": m["n_pr"], "n_floor": len(b),
        "features": ex.name, "kid_subset_size": m["kid_subset_size"], "kid_subsets": m["kid_subsets"], "pr_k": k, "seed": seed,
        "sample_seconds": round(sample_s, 3),
    }

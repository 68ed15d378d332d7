"""Calibrate the generation judge: the issue's reference generator scored by judge-v1.

    python benchmarks/dcgan_reference.py [--seed 0] [--score-at 8 16 24] [--json OUT.json]

Issue 10 quotes pytorch/examples' DCGAN, trained 8 CPU minutes on the 4,000 real digits, at 1.72x its
real-vs-real floor under the issue's own judge, and sets recogen's target (best family <= 1.5x) from it.
``generate_judge.py`` scores recogen with another judge (judge-v1, fixed before any generator was scored),
whose scale may differ a lot. This script trains that reference recipe here and scores it with judge-v1 in
exactly the protocol of ``generate_judge.py`` (same judge weights from its cache, same reference and floor
sets), so the two figures can be read against each other.

The reference recipe, as pytorch/examples/dcgan/main.py publishes it (our own code, not theirs): images
resized to 64 px and scaled to [-1, 1]; generator ConvTranspose 100->512->256->128->64->1 (4x4 kernels,
BatchNorm + ReLU, Tanh out), discriminator the mirror (LeakyReLU 0.2, BatchNorm, sigmoid out), weights
N(0, 0.02) and BatchNorm N(1, 0.02); binary cross-entropy, real label 1 / fake 0, the generator trained to
make D say 1; Adam lr 2e-4, betas (0.5, 0.999), batch 64, nz 100, ngf = ndf = 64. It learns from train_S
(the same 3,400 images recogen's generators learn from) for a wall-clock budget; samples are resized back to
28 px (bilinear, antialiased) and rounded to uint8, as the real images are. The generator is scored at
each ``--score-at`` minute of one training run (8, the issue's budget, by default), both with BatchNorm in
eval mode and in train mode (batch statistics: how pytorch/examples itself draws its sample grids).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bench_common
import generate_judge as gj

import torch
import torch.nn.functional as F
from torch import nn

NZ, NGF, NDF, SIZE = 100, 64, 64, 64


def generator() -> nn.Sequential:
    def up(cin, cout, stride, pad):
        return [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    return nn.Sequential(*up(NZ, NGF * 8, 1, 0), *up(NGF * 8, NGF * 4, 2, 1), *up(NGF * 4, NGF * 2, 2, 1),
                         *up(NGF * 2, NGF, 2, 1), nn.ConvTranspose2d(NGF, 1, 4, 2, 1, bias=False), nn.Tanh())


def discriminator() -> nn.Sequential:
    def down(cin, cout, bn=True):
        return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), *([nn.BatchNorm2d(cout)] if bn else []),
                nn.LeakyReLU(0.2, inplace=True)]

    return nn.Sequential(*down(1, NDF, bn=False), *down(NDF, NDF * 2), *down(NDF * 2, NDF * 4), *down(NDF * 4, NDF * 8),
                         nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())


def init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def to_model(images_u8: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(images_u8.float() / 127.5 - 1.0, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1)


def to_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def train(images_u8: torch.Tensor, seed: int, score_at_s: list[float], on_checkpoint) -> dict:
    """Train for ``max(score_at_s)`` seconds; ``on_checkpoint(g, record)`` at each time of ``score_at_s``."""
    torch.manual_seed(seed)
    data = to_model(images_u8)
    g, d = generator(), discriminator()
    g.apply(init_weights)
    d.apply(init_weights)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    pending = sorted(score_at_s)
    budget_s = pending[-1]
    steps, epochs, t0 = 0, 0, time.perf_counter()
    scored_s = 0.0  # time spent scoring, not counted as training time
    while pending:
        perm = torch.randperm(len(data))
        for i in range(0, len(data) - 63, 64):  # drop_last, as a DataLoader with shuffle would give full batches
            real = data[perm[i : i + 64]]
            b = len(real)
            # D: real -> 1, fake -> 0
            d.zero_grad()
            noise = torch.randn(b, NZ, 1, 1)
            fake = g(noise)
            loss_d = bce(d(real).view(-1), torch.ones(b)) + bce(d(fake.detach()).view(-1), torch.zeros(b))
            loss_d.backward()
            opt_d.step()
            # G: make D say 1
            g.zero_grad()
            loss_g = bce(d(fake).view(-1), torch.ones(b))
            loss_g.backward()
            opt_g.step()
            steps += 1
            train_s = time.perf_counter() - t0 - scored_s
            if pending and train_s >= pending[0]:
                t_score = time.perf_counter()
                on_checkpoint(g, {"minutes": pending.pop(0) / 60, "steps": steps, "epochs_started": epochs + 1,
                                  "train_s": round(train_s, 1)})
                g.train()
                scored_s += time.perf_counter() - t_score
            if not pending:
                break
        epochs += 1
        print(f"epoch {epochs}: {steps} steps, {time.perf_counter() - t0 - scored_s:.0f} s, loss D {loss_d.item():.3f} "
              f"G {loss_g.item():.3f}", flush=True)
    return {"steps": steps, "budget_s": budget_s}


@torch.inference_mode()
def sample(g: nn.Module, n: int, seed: int, size: int, bn_train: bool) -> torch.Tensor:
    """n samples in batches of 250; BatchNorm with running statistics (eval) or batch statistics (train; the
    running statistics are restored afterwards)."""
    state = {k: v.clone() for k, v in g.state_dict().items()}
    g.train(bn_train)
    gen = torch.Generator().manual_seed(seed)
    out = torch.cat([to_uint8(g(torch.randn(min(250, n - i), NZ, 1, 1, generator=gen)), size) for i in range(0, n, 250)])
    g.load_state_dict(state)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score-at", type=float, nargs="+", default=[8.0], metavar="MIN",
                    help="training minutes at which to score (default 8, the issue's budget)")
    ap.add_argument("--out", type=Path, default=gj.ROOT / "runs" / "bench_generate_judge", help="where judges are cached")
    ap.add_argument("--json", type=Path, metavar="OUT")
    ap.add_argument("--samples-png", type=Path, help="write a grid of 64 samples here")
    a = ap.parse_args()

    import numpy as np

    from recogen.data import DataOptions, create_dataset

    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = create_dataset(gj.DATA, DataOptions(seed=a.seed))
    judge, jmeta = gj.get_judge(splits, a.seed, gj.JUDGE_RECIPE["epochs"], a.out / "judges")
    scorer = gj.Scorer(gj.judge_extractor(judge, f"judge-v1 seed {a.seed}"), splits.test.images)
    floor_idx = np.sort(np.random.default_rng(a.seed).choice(len(splits.train), gj.N, replace=False))
    floor = scorer.score(splits.train.images[floor_idx])
    print(f"judge-v1 seed {a.seed} ({'cached' if jmeta['cached'] else 'trained'}), floor FID {floor['fid']:.3f}", flush=True)

    rows = []

    def score(g: nn.Module, rec: dict) -> None:
        for bn_train in (False, True):
            t0 = time.perf_counter()
            imgs = sample(g, gj.N, a.seed, splits.test.images.shape[-1], bn_train)
            sample_s = time.perf_counter() - t0
            sc = scorer.score(imgs)
            shares = torch.bincount(gj.predict(judge, imgs), minlength=len(splits.classes)).float() / len(imgs)
            row = {**rec, "batchnorm": "train (batch statistics)" if bn_train else "eval (running statistics)",
                   "sample_s": round(sample_s, 2), **sc, "fid_floor": floor["fid"], "ratio": sc["fid"] / floor["fid"],
                   "judge_class_shares": [round(float(v), 3) for v in shares]}
            rows.append(row)
            print(f"{rec['minutes']:g} min ({rec['steps']} steps), BatchNorm {'train' if bn_train else 'eval'}: FID "
                  f"{sc['fid']:.3f} / floor {floor['fid']:.3f} = {row['ratio']:.1f}x; precision {sc['precision']:.2f} "
                  f"recall {sc['recall']:.2f}; judge's class shares {float(shares.min()):.3f}-{float(shares.max()):.3f}",
                  flush=True)
            if a.samples_png:
                from torchvision.utils import make_grid

                from recogen.data.images import write_png

                path = a.samples_png.with_name(f"{a.samples_png.stem}_{rec['minutes']:g}min_bn{'train' if bn_train else 'eval'}.png")
                write_png(make_grid(imgs[:64], nrow=8, padding=2), path)

    train(splits.train.images, a.seed, [m * 60 for m in a.score_at], score)
    if a.json:
        bench_common.write_result(a.json, "dcgan_reference", seed=a.seed, recipe="pytorch/examples dcgan (64 px, nz 100, "
                                  "ngf=ndf=64, Adam 2e-4 b1 0.5, batch 64, BCE)", judge_sha256=jmeta["sha256"],
                                  fid_floor=floor["fid"], threads=torch.get_num_threads(), rows=rows)

if __name__ == "__main__":
    sys.exit(main())

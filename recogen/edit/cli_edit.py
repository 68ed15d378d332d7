"""``recogen edit interpolate|inpaint|vary|attribute``: argparse only here; the work is in
:mod:`recogen.edit.api`, imported when a command runs (``recogen --help`` stays instant)."""
from __future__ import annotations

import argparse

# Per-family editing options (forwarded only when given; the family's editor refuses the others).
FAMILY_OPTIONS = [
    ("--ddim-steps", int, "ddpm: DDIM steps of inversion, SDEdit and RePaint (default 50)"),
    ("--resample", int, "ddpm inpaint: RePaint resampling rounds per step (default 2)"),
    ("--search-steps", int, "dcgan: Adam steps of the latent search (default 200)"),
    ("--restarts", int, "dcgan: random starts of the latent search (default 4)"),
    ("--inpaint-iters", int, "vae inpaint: encode-decode-paste rounds (default 30)"),
]
OPTION_DESTS = [f.lstrip("-").replace("-", "_") for f, _, _ in FAMILY_OPTIONS]


def add_parser(sub, parser_class) -> None:
    """Add ``edit``, its four run actions and the pipeline ones (:mod:`recogen.pipelines`) to the subparsers ``sub``."""
    ed = sub.add_parser("edit", help="edit images with a generator run (interpolate, inpaint, vary, attribute) or a "
                                     "diffusers pipeline (img2img, inpaint)")
    acts = ed.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class, required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", metavar="PATH.png", help="result PNG (default RUN/edits/ACTION.png); the strip goes "
                                                         "beside it as NAME_strip.png")
        p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
        for flag, typ, help_ in FAMILY_OPTIONS:
            p.add_argument(flag, type=typ, help=help_)
        p.set_defaults(func=run_edit)

    ip = acts.add_parser("interpolate", help="frames along the latent path from image A to image B")
    ip.add_argument("run", help="run folder of `recogen generate train` (vae, dcgan or ddpm)")
    ip.add_argument("--a", required=True, metavar="IMG", help="first image")
    ip.add_argument("--b", required=True, metavar="IMG", help="last image")
    ip.add_argument("--steps", type=int, default=8, help="frames, both ends included (default 8)")
    common(ip)

    pp = acts.add_parser("inpaint", help="fill the white region of a mask (a run; or a diffusers pipeline with --prompt)")
    pp.add_argument("run", help="run folder of `recogen generate train`, or with --prompt a diffusers pipeline "
                                "(Hub id or folder)")
    pp.add_argument("image", help="image to fill")
    pp.add_argument("--mask", required=True, metavar="MASK", help="mask image of the same size: white = fill, black = keep")
    common(pp)

    vp = acts.add_parser("vary", help="variations of an image (SDEdit for ddpm)")
    vp.add_argument("run", help="run folder of `recogen generate train`")
    vp.add_argument("image", help="image to vary")
    vp.add_argument("--strength", type=float, default=0.5, help="0 = the image, 1 = as far as the model goes (default 0.5)")
    vp.add_argument("--n", type=int, default=4, help="number of variations (default 4)")
    common(vp)

    ap = acts.add_parser("attribute", help="move an image from one class towards another (latent arithmetic)")
    ap.add_argument("run", help="run folder of `recogen generate train`")
    ap.add_argument("image", help="image to edit")
    ap.add_argument("--from", dest="from_", required=True, metavar="CLASS", help="the image's class (name or index)")
    ap.add_argument("--to", required=True, metavar="CLASS", help="class to move towards (name or index)")
    ap.add_argument("--amount", type=float, default=1.0, help="how far along the direction (0 = reconstruction; default 1)")
    ap.add_argument("--data", help="labelled data for the class means (default: the run's own data set)")
    ap.add_argument("--per-class", type=int, default=32, help="images per class averaged for the direction (default 32)")
    common(ap)

    # Published diffusers pipelines: `edit img2img`, and `edit inpaint` with a pipeline and --prompt.
    from ..pipelines.cli import add_actions as add_pipeline_actions

    add_pipeline_actions(acts, "edit", parser_class, existing={"inpaint": pp},
                         run_only=[(f, d) for (f, _, _), d in zip(FAMILY_OPTIONS, OPTION_DESTS)])


def _interpolate(ns, api, kw):
    res = api.interpolate(ns.run, ns.a, ns.b, steps=ns.steps, **kw)
    return res, f"{len(res.images)} frames"


def _inpaint(ns, api, kw):
    res = api.inpaint(ns.run, ns.image, ns.mask, **kw)
    return res, f"filled {res.info['filled_fraction']:.0%} of the image"


def _vary(ns, api, kw):
    res = api.vary(ns.run, ns.image, strength=ns.strength, n=ns.n, **kw)
    return res, f"{len(res.images)} variations at strength {ns.strength:g}"


def _attribute(ns, api, kw):
    res = api.attribute(ns.run, ns.image, ns.from_, ns.to, amount=ns.amount, data=ns.data, per_class=ns.per_class, **kw)
    return res, f"{res.info['mode']}, {ns.from_} -> {ns.to}, amount {ns.amount:g}"


# action -> runner(ns, api module, shared keyword options) -> (EditResult, summary)
RUNNERS = {"interpolate": _interpolate, "inpaint": _inpaint, "vary": _vary, "attribute": _attribute}


def run_edit(ns: argparse.Namespace) -> int:
    """Run one edit and print what it wrote."""
    from . import api

    opts = {k: getattr(ns, k) for k in OPTION_DESTS if getattr(ns, k) is not None}
    res, what = RUNNERS[ns.action](ns, api, dict(out=ns.out, seed=ns.seed, **opts))
    print(f"{ns.action} with {res.info['model']}: {what}")
    print(f"result: {res.path}")
    print(f"strip:  {res.strip}")
    return 0

"""Text-to-image latency and memory of a published diffusers pipeline through `recogen.text2img`.

One model, loaded once (the load time is reported apart), then ``--rounds`` timed calls of one image each
after one warm-up call, at ``--steps`` denoising steps and ``--size`` pixels; seconds per image and steps
per second are medians over the rounds. Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` over the
timed calls (weights included), on the CPU the process's peak resident set size. The pipeline is the one
the CLI and the service run (same loader, dtype choice and options), so the figures are what a user sees.

The model must be reachable: a Hub id needs the network or a filled cache, or pass a folder made by
``hf download ID --local-dir DIR`` (the GPU machine lent to a session has no network: copy the folder
there). Offline and not cached, it stops at once with the command that fetches it.

    python benchmarks/text2img_latency.py [--model stable-diffusion-v1-5/stable-diffusion-v1-5] [--steps 30]
        [--size 512] [--rounds 3] [--device auto] [--dtype auto] [--attention-slicing] [--json FILE]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", default="512")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--attention-slicing", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    import torch

    import recogen
    from recogen.errors import UserError

    opts = dict(steps=a.steps, size=a.size, device=a.device, dtype=a.dtype, attention_slicing=a.attention_slicing)
    try:
        t = time.perf_counter()
        first = recogen.text2img(a.model, PROMPT, seed=0, **opts)  # loads the pipeline: kept for the calls below
        load_and_first = time.perf_counter() - t
    except UserError as e:
        sys.exit(f"error: {e}")
    rec = first.record
    cuda = rec["device"].startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for r in range(a.rounds):
        res = recogen.text2img(a.model, PROMPT, seed=r + 1, **opts)
        seconds.append(res.record["seconds"])
        print(f"round {r + 1}: {seconds[-1]:.2f} s for one {res.record['width']}x{res.record['height']} image", flush=True)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    med = statistics.median(seconds)
    where = f"{rec['device']} ({torch.cuda.get_device_name(0)})" if cuda else rec["device"]
    summary = (f"`recogen.text2img` with {rec['model']} ({rec['pipeline']}), {rec['dtype']} on {where}, {a.steps} steps, "
               f"{rec['width']}x{rec['height']}, one image per call, guidance {rec['guidance']}: median **{med:.2f} s** "
               f"per image ({a.steps / med:.1f} steps/s) over {a.rounds} calls after a warm-up; load "
               f"{rec.get('load_seconds', float('nan')):.1f} s (load + first image {load_and_first:.1f} s); peak "
               f"{'GPU memory allocated' if cuda else 'resident memory'} **{peak:.2f} GiB**.")
    print(summary)
    result = dict(model=rec["model"], pipeline=rec["pipeline"], device=where, dtype=rec["dtype"], steps=a.steps,
                  width=rec["width"], height=rec["height"], seconds=seconds, median_s=med,
                  load_s=rec.get("load_seconds"), peak_gib=peak, runs=a.rounds, code=bench_common.code_state(),
                  summary=summary,
                  table={"columns": ["round", "seconds / image", "steps / s"],
                         "rows": [[i + 1, f"{s:.2f}", f"{a.steps / s:.1f}"] for i, s in enumerate(seconds)]})
    if a.json:
        bench_common.write_result(a.json, "text2img_latency", **result)
    return result


if __name__ == "__main__":
    main()

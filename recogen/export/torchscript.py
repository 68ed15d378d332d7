"""TorchScript export: the same graph as the ONNX file (:mod:`.graphs`), traced, checked against eager.

Tracing (not scripting) because the graphs hold no data-dependent control flow, and timm/torchvision
backbones trace where many do not script. Detectors therefore export the network before decoding
and NMS, as for ONNX; the file's ``extra_files`` carry the model card and the graph description.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .graphs import CHECK_BATCHES, build_graph, check_against_eager

TOLERANCE = 1e-5  # the traced graph runs the same kernels as eager: only reordering differences


def export_torchscript(model: nn.Module, card: dict[str, Any], out: Path) -> dict[str, Any]:
    """Trace ``model``'s export graph to ``out`` (atomically), checked on batches of 1 and 3."""
    from ..utils import atomic_write

    graph = build_graph(model, card)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on torchvision's shape arithmetic
        try:
            traced = torch.jit.trace(graph.module, (graph.sample(2, 0),), check_trace=False)
        except Exception as e:
            raise ModelError(f"TorchScript export of {card.get('model')} failed: {str(e).splitlines()[0][:300]}") from e
        diff = check_against_eager(graph, lambda x: tuple(t.numpy() for t in traced(x)))
    if not diff <= TOLERANCE:
        raise ModelError(f"TorchScript export of {card.get('model')} does not match the PyTorch model: max abs "
                         f"difference {diff:.3g} > {TOLERANCE:g}; nothing was written")
    extra = {"recogen_card.json": json.dumps(card), "recogen_graph.json": json.dumps(
        {**graph.meta, "outputs": graph.output_names, "input": graph.input_doc})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated": still the TorchScript format
        atomic_write(out, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
    return {"path": str(out), "max_abs_diff": diff, "batches": list(CHECK_BATCHES), "outputs": graph.output_names,
            "seconds": time.perf_counter() - t0}

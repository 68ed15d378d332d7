"""``recogen export RUN --format onnx|torchscript|safetensors``: the CLI's printing around export_model."""
from __future__ import annotations

import argparse


def run_export(ns: argparse.Namespace) -> int:
    """Export, then print what was checked and what was written."""
    from . import export_model
    from .onnx import TOLERANCE

    r = export_model(ns.run, ns.format, out=ns.out, opset=ns.opset, force=ns.force)
    if ns.format == "onnx":
        print(f"onnxruntime check: max abs difference {r['max_abs_diff']:.2e} vs PyTorch (limit {TOLERANCE:g}), "
              f"batches {' and '.join(map(str, r['batches']))}; opset {r['opset']}; outputs {', '.join(r['outputs'])}")
    elif ns.format == "torchscript":
        print(f"traced graph check: max abs difference {r['max_abs_diff']:.2e} vs PyTorch, "
              f"batches {' and '.join(map(str, r['batches']))}; outputs {', '.join(r['outputs'])}")
    print(f"wrote {r['path']} (model card: {r['card']})")
    return 0

"""ONNX export, checked against onnxruntime, and the onnxruntime backend of the predictors.

Export uses torch's TorchScript-based exporter (``dynamo=False``): on these models it is ~9x faster
than the dynamo exporter (0.4 s vs 3.6 s for resnet18, measured), needs no onnxscript, and
handles the torchvision detector backbones and heads; the graphs (:mod:`.graphs`) hold no NMS or
data-dependent control flow, which is where that exporter is weak. The batch axis is dynamic.

The file's metadata carries the model card (``recogen.card``), what the runtime needs to use the
outputs (``recogen.graph``) and the SHA-256 of the weights it came from (``recogen.weights_sha256``),
so a stale export (the run was retrained since) is refused instead of silently used.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, RunError
from .graphs import CHECK_BATCHES, INPUT_NAME, Graph, build_graph, check_against_eager

DEFAULT_OPSET = 17
TOLERANCE = 1e-4  # fp32: max |onnxruntime - eager| over the sample batches (graphs.CHECK_BATCHES)


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file (ties an export to the weights it was made from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("onnxruntime is not installed; `pip install onnx onnxruntime` (or use --backend torch)") from None
    return onnxruntime


def open_session(path: str | Path):
    """An onnxruntime CPU session using as many threads as torch is set to (OMP_NUM_THREADS)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _export_graph(graph: Graph, path: str, opset: int) -> None:
    x = graph.sample(2, 0)
    names = graph.output_names
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo (see the module docstring);
        # torchvision's code trips harmless tracer warnings on shape arithmetic.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, (x,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
                          do_constant_folding=True)


def _add_metadata(path: str, card: dict[str, Any], graph: Graph, sha: str | None) -> None:
    import onnx

    m = onnx.load(path)
    meta = {"recogen.card": json.dumps(card), "recogen.graph": json.dumps(graph.meta),
            "recogen.input": graph.input_doc}
    if sha:
        meta["recogen.weights_sha256"] = sha
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    m.doc_string = f"recogen {card.get('task')} model {card.get('model')}; input '{INPUT_NAME}': {graph.input_doc}"
    onnx.save(m, path)


def verify(graph: Graph, path: str) -> float:
    """Max |onnxruntime - eager| over the seeded sample batches (graphs.CHECK_BATCHES)."""
    sess = open_session(path)
    return check_against_eager(graph, lambda x: tuple(sess.run(graph.output_names, {INPUT_NAME: x.numpy()})))


def export_onnx(model: nn.Module, card: dict[str, Any], out: Path, opset: int = DEFAULT_OPSET,
                weights: Path | None = None) -> dict[str, Any]:
    """Export ``model`` to ``out`` (atomically) and check it against onnxruntime.

    Raises :class:`ModelError` (and writes nothing) when the export fails or differs from eager by
    more than TOLERANCE. Returns ``{"path", "max_abs_diff", "batches", "seconds", "outputs"}``.
    """
    from ..utils import atomic_write

    graph = build_graph(model, card)
    sha = weights_sha256(weights) if weights is not None and weights.is_file() else None
    result: dict[str, Any] = {}
    t0 = time.perf_counter()

    def write(tmp: str) -> None:
        try:
            _export_graph(graph, tmp, opset)
        except Exception as e:  # the exporter's errors are long; one line naming the model suffices
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"ONNX export of {card.get('model')} failed: {first[:300]}") from e
        _add_metadata(tmp, card, graph, sha)
        diff = verify(graph, tmp)
        if not diff <= TOLERANCE:  # also catches NaN
            raise ModelError(f"ONNX export of {card.get('model')} does not match the PyTorch model: max abs "
                             f"difference {diff:.3g} > {TOLERANCE:g} on sample inputs; nothing was written")
        result.update(max_abs_diff=diff)

    atomic_write(out, write)
    result.update(path=str(out), batches=list(CHECK_BATCHES), seconds=time.perf_counter() - t0,
                  outputs=graph.output_names, opset=opset)
    return result


# ------------------------------------------------------------------------------------- the backend
class OnnxNet(nn.Module):
    """Drop-in for a classifier or segmenter network: ``forward(x) -> logits`` runs in onnxruntime."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        # The predictors read the device from the first parameter; onnxruntime runs on the CPU.
        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(["logits"], {INPUT_NAME: x.detach().float().contiguous().cpu().numpy()})
        return torch.from_numpy(y)


class OnnxDetector(nn.Module):
    """Drop-in for a torchvision detector in eval mode: the network runs in onnxruntime, then the
    detector's own anchors, box decoding, score threshold, NMS and top-k run in torch.

    ``score_thresh`` / ``nms_thresh`` / ``detections_per_img`` (and ``roi_heads`` for Faster R-CNN) are
    the wrapped detector's, so ``recogen.tasks.detect.postprocess`` sets them as for the eager model.
    """

    def __init__(self, det: nn.Module, session, meta: dict[str, Any], output_names: list[str]):
        super().__init__()
        self.det, self.session, self.meta, self.names = det.eval(), session, meta, output_names
        if hasattr(det, "roi_heads"):
            self.roi_heads = det.roi_heads

    def __getattr__(self, name: str):
        if name in ("score_thresh", "nms_thresh", "detections_per_img"):
            return getattr(self.det, name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("score_thresh", "nms_thresh", "detections_per_img"):
            setattr(self.det, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from torchvision.models.detection.image_list import ImageList

        det, meta = self.det, self.meta
        if not images:
            return []
        sizes = [tuple(img.shape[-2:]) for img in images]
        if len(set(sizes)) != 1:
            raise ModelError("the onnx backend takes a batch of images of one size (the model's input size)")
        x = torch.stack(images).float().contiguous()
        outs = [torch.from_numpy(o) for o in self.session.run(self.names, {INPUT_NAME: x.numpy()})]
        n, p = len(images), meta["padded_size"]
        # Anchors depend only on the shapes of the padded batch and the feature maps: empty tensors carry them.
        il = ImageList(torch.empty((n, 0, p, p)), [tuple(int(v) for v in s) for s in sizes])
        kind = meta["kind"]
        with torch.inference_mode():
            if kind == "two-stage":
                feats = dict(zip(meta["keys"], outs))  # the FPN's own keys, as its RoI pooling expects
                proposals, _ = det.rpn(il, feats)
                dets, _ = det.roi_heads(feats, proposals, il.image_sizes)
            else:
                feats = [torch.empty((n, 0, h, w)) for h, w in meta["levels"]]
                head = dict(zip(self.names, outs))
                anchors = det.anchor_generator(il, feats)
                if kind == "levels":  # FCOS, RetinaNet: per-level split, as their forward does
                    hw = [h * w for h, w in meta["levels"]]
                    a = next(iter(head.values())).shape[1] // sum(hw)
                    per_level = [v * a for v in hw]
                    head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
                    anchors = [list(t.split(per_level)) for t in anchors]
                dets = det.postprocess_detections(head, anchors, il.image_sizes)
            return det.transform.postprocess(dets, il.image_sizes, sizes)


def onnx_path(path: str | Path) -> Path:
    """The ONNX file of a run folder / model.json / model.onnx: beside the card, ``model.onnx``."""
    from ..artifact import find_card

    p = Path(path).expanduser()
    if p.suffix == ".onnx":
        return p
    return find_card(p).with_suffix(".onnx")


def load_onnx_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(module, card)`` for the predictors' ``--backend onnx``: a drop-in for the torch network.

    Needs an export made by ``recogen export RUN --format onnx``; does not make one (a predict must
    not write into the run folder, and an export takes seconds and may fail verification).
    """
    from ..artifact import find_card, load_portable, read_card

    if device != "cpu":
        raise ModelError(f"the onnx backend runs on the CPU (onnxruntime); got device {device!r}, use --backend torch")
    f = onnx_path(path)
    if not f.is_file():
        run = f.parent
        raise RunError(f"no ONNX export at {f}; run `recogen export {run} --format onnx` first (or use --backend torch)")
    card_path = f.with_suffix(".json") if f.with_suffix(".json").is_file() else find_card(f.parent)
    card = read_card(card_path)
    session = open_session(f)
    props = session.get_modelmeta().custom_metadata_map
    if "recogen.graph" not in props:
        raise RunError(f"{f} was not exported by recogen (no recogen metadata); re-export with `recogen export`")
    weights = card_path.with_suffix(".safetensors")
    sha = props.get("recogen.weights_sha256")
    if sha and weights.is_file() and weights_sha256(weights) != sha:
        raise RunError(f"{f} was exported from other weights than {weights} (the run was trained again); "
                       f"re-export with `recogen export {f.parent} --format onnx --force`")
    meta = json.loads(props["recogen.graph"])
    if card.get("task") == "detect":
        # Decoding and NMS reuse the torch detector (and, for Faster R-CNN, its RPN and RoI heads).
        det, _ = load_portable(card_path, "cpu")
        names = [o.name for o in session.get_outputs()]
        return OnnxDetector(det, session, meta, names), card
    return OnnxNet(session).eval(), card

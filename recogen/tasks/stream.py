"""Predict a folder of any size into a JSON-lines file: ``recogen TASK predict RUN FOLDER --out results.jsonl``.

The in-memory ``predict`` opens every image first and holds every result; this path streams instead:

- the image files are listed lazily in a stable order (an ``os.scandir`` walk, entries sorted by name: the
  order of :func:`~recogen.data.images.expand_inputs`); only the list of paths is kept, packed into one
  bytes object so that the DataLoader's worker processes do not copy it page by page as they read it;
- DataLoader workers decode and resize the images (``read_for_card``, as each Predictor's ``preprocess``);
- Lightning's ``Trainer.predict`` runs the batches through the model (inference mode, on the accelerator,
  in ``--devices`` processes with Lightning's unrepeated distributed sampler), and each task's
  ``Predictor.stream_batch`` hook turns a batch into the same result dicts ``predict --json`` prints;
- a :class:`~lightning.pytorch.callbacks.BasePredictionWriter` appends one JSON line per image after every
  batch and flushes it: one process writes OUT itself; several processes each write ``OUT.partR`` (R: its
  global rank) and global rank 0 merges the parts into OUT, in input order, at the end.

Resuming: the paths already in OUT (and in any ``OUT.partR`` of a killed multi-process run) are skipped; a
torn last line (the process was killed while writing it) is dropped and predicted again. ``overwrite``
starts again. The final OUT holds each input image once, in input order, whatever the number of processes
and however often the run was stopped.

Unreadable images: with ``skip_bad`` each becomes a line ``{"path": ..., "error": "cannot read image ..."}``
(an error line counts as done: ``overwrite`` retries them). Without it, a process stops at its first
unreadable image (the other processes finish their share), the results so far stay in OUT, and a
:class:`~recogen.errors.DataError` names the file: streaming cannot check 100,000 files before it starts,
so the run stops where it meets one, and resumes there once the file is fixed or removed.
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ..data.folder import IMAGE_EXTENSIONS
from ..data.images import read_for_card
from ..data.paths import PathTable
from ..errors import ConfigError, DataError
from .distributed import end_process_group, is_global_zero

log = logging.getLogger("recogen.predict")

DEFAULT_BATCH_SIZE = 64


def default_workers(devices: int = 1) -> int:
    """DataLoader workers per process: up to 4, sharing the machine's cores between the processes."""
    return min(4, max(1, (os.cpu_count() or 1) // max(1, devices)))


# ------------------------------------------------------------------------------------------ listing
def list_images(inputs: Iterable[str | Path]) -> list[str]:
    """The image files of ``inputs`` (files as given, folders walked), each once, in the order of
    :func:`~recogen.data.images.expand_inputs`: a folder's files sorted by their path's parts, found by an
    ``os.scandir`` walk (symlinked folders are not followed, as ``Path.rglob``). Only strings are kept."""
    out: list[str] = []
    seen: set[str] = set()
    for arg in inputs:
        p = str(Path(arg))
        if os.path.isdir(p):
            found = list(_walk(p))
            if not found:
                raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {p}")
        elif os.path.isfile(p):
            found = [p]
        else:
            raise DataError(f"no such file or folder: {p}")
        for f in found:
            if f not in seen:  # a result line per path: the same file given twice is predicted once
                seen.add(f)
                out.append(f)
    return out


def _walk(folder: str) -> Iterator[str]:
    # Entries sorted by name, folders entered in place: the order of sorting the paths by their parts.
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        path = e.name if folder == "." else os.path.join(folder, e.name)  # as str(Path(folder) / name)
        if e.is_dir(follow_symlinks=False):
            yield from _walk(path)
        elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
            yield path


def save_names(files: list[str]) -> dict[int, str]:
    """File index -> the name its saved picture gets (``--save``) where its stem is taken by an earlier
    file: ``stem``, then ``stem_2``, ``stem_3``... Computed over the whole listing, so a resumed or
    multi-process run names every file as one uninterrupted run does."""
    used: set[str] = set()
    out: dict[int, str] = {}
    for i, f in enumerate(files):
        stem = name = Path(f).stem
        k = 2
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        if name != stem:
            out[i] = name
    return out


# -------------------------------------------------------------------------------- the results file
def part_files(out: Path) -> list[Path]:
    """The ``OUT.partR`` files of a multi-process run (being written, or left by a killed one)."""
    prefix = out.name + ".part"
    if not out.parent.is_dir():
        return []
    return sorted((p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()),
                  key=lambda p: int(p.name[len(prefix):]))


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def _lines(path: Path, repair: bool) -> Iterator[tuple[str, bytes]]:
    """``(image path, raw line)`` of every complete result line of ``path``. A torn last line (no newline,
    or not JSON: the writer was killed in the middle of it) is left out, and cut off the file if ``repair``;
    a bad line anywhere else means the file is not a results file."""
    with open(path, "rb") as f:
        good, lineno = 0, 0
        while raw := f.readline():
            lineno += 1
            try:
                image = json.loads(raw)["path"] if raw.endswith(b"\n") else None
            except (ValueError, TypeError, KeyError):
                image = None
            if not isinstance(image, str):
                if f.read(1) == b"":  # the last line: torn by a kill
                    break
                raise DataError(f"{path} line {lineno} is not a result line (a JSON object with a \"path\"); "
                                f"pass --overwrite to replace the file, or choose another --out")
            good += len(raw)
            yield image, raw
    if repair and path.stat().st_size != good:
        log.warning(f"note: dropped the torn last line of {path} (its image is predicted again)")
        os.truncate(path, good)


def done_paths(out: Path, repair: bool = False) -> set[str]:
    """The image paths that already have a line in ``out`` or its part files."""
    return {image for src in [out, *part_files(out)] if src.is_file() for image, _ in _lines(src, repair)}


def finish_file(out: Path, files: list[str]) -> None:
    """Make ``out`` hold each result once, in the order of ``files`` (results of images that are not in
    ``files`` come last, in their file's order): merge the part files into it and sort it if a resumed
    run appended out of order. The sources are read as sorted runs and merged (``heapq.merge``), so
    memory does not grow with the number of lines; the new file replaces ``out`` in one rename."""
    parts = part_files(out)
    order = {f: i for i, f in enumerate(files)}
    end = len(files)
    runs: list[tuple[Path, int, int]] = []  # (file, start offset, stop offset) of lines in ascending order
    for src in [out, *parts]:
        if not src.is_file():
            continue
        start = pos = 0
        last = -1
        for image, raw in _lines(src, repair=False):
            key = order.get(image, end)
            if key < last:
                runs.append((src, start, pos))
                start = pos
            last, pos = key, pos + len(raw)
        if pos > start:
            runs.append((src, start, pos))
    if not parts and len(runs) <= 1:
        return

    def run_lines(src: Path, start: int, stop: int) -> Iterator[tuple[int, str, bytes]]:
        with open(src, "rb") as f:
            f.seek(start)
            while f.tell() < stop:
                raw = f.readline()
                image = json.loads(raw)["path"]
                yield order.get(image, end), image, raw

    tmp = out.with_name(f".{out.name}.merging")
    with open(tmp, "wb") as f:
        last_key, at_key = -1, set()  # a path written twice (a merge killed before it removed the parts) once
        for key, image, raw in heapq.merge(*(run_lines(*r) for r in runs), key=lambda t: t[0]):
            if key != last_key:
                last_key, at_key = key, set()
            if image not in at_key:
                at_key.add(image)
                f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    for p in parts:
        p.unlink()


# ------------------------------------------------------------------------------------------ loading
class _Images(torch.utils.data.Dataset):
    """The pending images, decoded and fitted to the model's input in the DataLoader's workers."""

    def __init__(self, paths: PathTable, card: dict[str, Any], names: dict[int, str] | None, stop):
        self.paths, self.card, self.names, self.stop = paths, card, names, stop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        item: dict[str, Any] = {"path": path}
        if self.names is not None:
            item["name"] = self.names.get(i) or Path(path).stem
        if self.stop.is_set():  # this process met an unreadable image and stops: no more decoding
            return {**item, "skipped": True}
        try:
            x, img = read_for_card(path, self.card)  # what each Predictor's preprocess does
        except DataError as e:
            return {**item, "error": str(e)}
        return {**item, "x": x[0], "size": torch.tensor([img.height, img.width])}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The decoded images stacked (``x`` uint8 (B, C, S, S), ``size`` (B, 2), ``path``, ``name``), and
    ``items``: every image of the batch in order, with its error (None if it was read) or skip mark."""
    good = [it for it in items if "x" in it]
    batch: dict[str, Any] = {"items": [(it["path"], it.get("error"), it.get("skipped", False)) for it in items],
                             "path": [it["path"] for it in good]}
    if good:
        batch["x"] = torch.stack([it["x"] for it in good])
        batch["size"] = torch.stack([it["size"] for it in good])
    if items and "name" in items[0]:
        batch["name"] = [it["name"] for it in good]
    return batch


# ------------------------------------------------------------------------------------- Lightning
class _StreamModule(pl.LightningModule):
    """The predictor's network in a LightningModule: ``predict_step`` returns a batch's JSON lines."""

    def __init__(self, predictor, options: dict[str, Any], out_dir: Path | None, skip_bad: bool, stop):
        super().__init__()
        if isinstance(predictor.model, torch.nn.Module):
            self.net = predictor.model  # registered: Lightning moves it to the device
        self.predictor, self.options, self.out_dir, self.skip_bad, self.stop = predictor, options, out_dir, skip_bad, stop
        self.written, self.errors, self.first_error = 0, 0, None

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # stays on the CPU: each task's stream_batch moves its input to the model, as predict does

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        if self.first_error is not None:  # stopped: batches decoded before the stop are dropped
            return []
        results = iter(self.predictor.stream_batch(batch, out_dir=self.out_dir, **self.options) if "x" in batch else ())
        lines = []
        for path, error, skipped in batch["items"]:
            if skipped:
                continue
            if error is not None:
                if not self.skip_bad:
                    self.first_error = (path, error)
                    self.stop.set()
                    break
                self.errors += 1
                lines.append(json.dumps({"path": path, "error": error}) + "\n")
            else:
                lines.append(json.dumps({"path": path, **next(results)}) + "\n")
        self.written += len(lines)
        return lines


class _Writer(BasePredictionWriter):
    """Appends each batch's lines to OUT (one process) or ``OUT.partR`` (global rank R of several) and
    flushes them; at the end the processes exchange their counts (which also waits for all of them)."""

    def __init__(self, out: Path):
        super().__init__(write_interval="batch")
        self.out, self.file, self.totals = out, None, None

    def on_predict_start(self, trainer, pl_module):
        path = self.out if trainer.world_size == 1 else _part(self.out, trainer.global_rank)
        self.file = open(path, "a", encoding="utf-8")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if prediction:
            self.file.write("".join(prediction))
            self.file.flush()  # in the kernel: a killed process loses at most the batch in hand
        # Lightning's predict loop keeps every batch's indices (for writers that write once at the end):
        # about 40 bytes per image, the one thing that grew with the number of images (tracemalloc). It
        # reads them by position, so the used ones are dropped in place.
        seen = getattr(getattr(trainer.predict_dataloaders, "batch_sampler", None), "seen_batch_indices", None)
        if isinstance(seen, list) and batch_idx < len(seen):
            seen[batch_idx] = None

    def on_predict_end(self, trainer, pl_module):
        self.file.close()
        mine = (pl_module.written, pl_module.errors, pl_module.first_error)
        if trainer.world_size > 1:
            import torch.distributed as dist

            every: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(every, mine)
        else:
            every = [mine]
        self.totals = every

    def on_exception(self, trainer, pl_module, exception):
        if self.file is not None:
            self.file.close()


# ---------------------------------------------------------------------------------------- the run
def predict_stream(task, run: str | Path, inputs: Iterable[str | Path], out: str | Path, *,
                   batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, devices: int = 1,
                   accelerator: str = "auto", skip_bad: bool = False, overwrite: bool = False,
                   out_dir: str | Path | None = None, backend: str = "torch", progress: bool | None = None,
                   **options: Any) -> dict[str, Any]:
    """Predict every image of ``inputs`` with the run ``run`` of ``task`` (its spec) into the JSON-lines
    file ``out``: one line per image, ``predict --json``'s result dict. ``options``: the task's predict
    options (``topk``, ``conf``...); ``out_dir``: where tasks that draw their results save them.

    Returns ``{"out", "images", "before", "written", "errors", "first_error"}`` in global rank 0 (the
    process that prints); in the other processes of a multi-process run, None. See the module's text
    for resuming and unreadable images."""
    out = Path(out)
    if batch_size < 1 or devices < 1 or (workers is not None and workers < 0):
        raise ConfigError(f"need --batch-size >= 1, --devices >= 1 and --workers >= 0; got {batch_size}, {devices}, {workers}")
    if out.suffix.lower() not in (".jsonl", ".ndjson"):
        raise ConfigError(f"--out {out}: name a .jsonl file (one JSON result per line)")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a .jsonl file")
    zero = is_global_zero()  # the copies Lightning starts for --devices N repeat this function: they only read
    files = list_images(inputs)
    predictor = task.load(run, "cpu", backend)
    if not hasattr(predictor, "stream_batch"):
        raise ConfigError(f"{task.name} cannot predict into --out (its predictor has no stream_batch)")
    if zero:
        out.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for p in [out, *part_files(out)]:
                p.unlink(missing_ok=True)
    done = set() if overwrite else done_paths(out, repair=zero)
    fresh = not done and not part_files(out)
    pending = [f for f in files if f not in done]
    before = len(files) - len(pending)
    del done
    if zero and before:
        log.info(f"resuming: {before} of {len(files)} image(s) already in {out}, {len(pending)} to predict")
    summary = {"out": str(out), "images": len(files), "before": before, "written": 0, "errors": 0, "first_error": None}
    devices = min(devices, len(pending)) or 1  # every process needs an image
    if pending:
        totals = _run(predictor, files, pending, out, batch_size=batch_size, devices=devices,
                      workers=default_workers(devices) if workers is None else workers,
                      accelerator="cpu" if backend == "onnx" and accelerator == "auto" else accelerator,
                      skip_bad=skip_bad, out_dir=None if out_dir is None else Path(out_dir), options=options,
                      progress=sys.stderr.isatty() if progress is None else progress)
        summary["written"] = sum(t[0] for t in totals)
        summary["errors"] = sum(t[1] for t in totals)
        stops = [t[2] for t in totals if t[2] is not None]
        summary["first_error"] = min(stops, key=lambda s: files.index(s[0])) if stops else None
    if not zero:
        return None
    if not (fresh and devices == 1):  # one process that started from an empty file wrote it in order
        finish_file(out, files)
    if summary["first_error"] is not None:
        path, error = summary["first_error"]
        raise DataError(f"{error}; the results before it are in {out}: fix or remove it and run the same command "
                        f"again to continue, or pass --skip-bad-images to write it as an error line")
    return summary


def _run(predictor, files: list[str], pending: list[str], out: Path, *, batch_size: int, devices: int, workers: int,
         accelerator: str, skip_bad: bool, out_dir: Path | None, options: dict[str, Any], progress: bool) -> list:
    """Lightning's predict loop over ``pending``; returns every process's (written, errors, first error)."""
    import multiprocessing

    names = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        where = {f: i for i, f in enumerate(pending)}
        names = {where[files[i]]: n for i, n in save_names(files).items() if files[i] in where}
    stop = multiprocessing.Event()
    data = torch.utils.data.DataLoader(_Images(PathTable(pending), predictor.card, names, stop), batch_size=batch_size,
                                       shuffle=False, num_workers=workers, collate_fn=_collate)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # Lightning's banner lines (GPU available...)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    writer = _Writer(out)
    try:
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
                             precision="32-true", logger=False, enable_checkpointing=False, enable_model_summary=False,
                             enable_progress_bar=progress, inference_mode=True, callbacks=[writer],
                             default_root_dir=str(out.parent))
    except (MisconfigurationException, ValueError, RuntimeError) as e:  # e.g. more --devices than the machine has
        raise ConfigError(f"--accelerator {accelerator} --devices {devices}: {str(e).strip().splitlines()[0]}") from None
    module = _StreamModule(predictor, options, out_dir, skip_bad, stop)
    try:
        trainer.predict(module, dataloaders=data, return_predictions=False)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl+C into sys.exit(1) after closing the files
            import signal

            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning set SIG_IGN
            raise KeyboardInterrupt(f"interrupted; the results so far are in {out}: run the same command again "
                                    f"to continue") from None
        raise
    end_process_group()
    return writer.totals

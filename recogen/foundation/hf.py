"""Where a foundation model's files come from, and loading it with transformers' own classes.

:func:`resolve` decides before anything heavy is imported (the shared rules of :mod:`recogen.hub`):
a folder must hold ``config.json``; a Hub id offline (``HF_HUB_OFFLINE=1``, or no route to the Hub)
must be in the Hub cache, else an :class:`~recogen.errors.OfflineError` names the id and the
``hf download ID --local-dir DIR`` command within a second. :func:`load` then builds the model and its
processor with ``from_pretrained`` (local files only when offline) and turns the library's load failures
into one-line errors.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import hub
from ..errors import ModelError, OfflineError

CONFIG = "config.json"  # what makes a folder (or a Hub repo) a transformers model


@dataclass(frozen=True)
class Source:
    """A resolved model: ``ref`` as given, ``location`` for ``from_pretrained`` (folder or Hub id),
    ``local_only``: load from disk only (a folder, or offline with the files cached)."""

    ref: str
    location: str
    is_folder: bool
    local_only: bool


def resolve(ref: str, prefix: str) -> Source:
    """Resolve ``ref`` (a folder or a Hub id) of the ``prefix`` family without loading anything."""
    path = Path(ref).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / CONFIG).is_file()):
            raise ModelError(f"{ref} is not a transformers model folder (no {CONFIG} in it); pass a folder made by "
                             "`save_pretrained` or `hf download ID --local-dir DIR`, or a Hub id")
        return Source(ref, str(path), True, True)
    if hub.looks_like_path(ref):
        raise ModelError(f"no such folder: {ref}; pass a model folder or a Hub id (owner/name)")
    if not hub.is_repo_id(ref):
        raise ModelError(f"{ref!r} is neither a folder nor a valid Hub id (owner/name)")
    cache = hub.hub_cache_dir(ref)
    cached = False
    if cache.is_dir():  # only then import the rest of huggingface_hub
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(ref, CONFIG), str)
    local = hub.require_cached(ref, cached, what="model", where=cache.parent, instead=f"--model {prefix}:DIR")
    return Source(ref, ref, False, local)


def pick_device(device: str) -> str:
    """``auto`` -> cuda, mps or cpu (as the diffusion pipelines pick it); anything else is checked."""
    from ..pipelines.device import pick_device as pick

    return pick(device)


def load(source: Source, model_class: Any, processor_class: Any, device: str, what: str) -> tuple[Any, Any]:
    """``(model in eval mode on device, processor)`` of ``source`` loaded with the given transformers
    classes (Auto classes or a family's own); ``what`` names the capability in errors."""
    with _quiet(), hub.libraries_offline(source.local_only), _load_errors(source, what):
        model = model_class.from_pretrained(source.location, local_files_only=source.local_only)
        processor = processor_class.from_pretrained(source.location, local_files_only=source.local_only)
    return model.to(device).eval(), processor


@contextlib.contextmanager
def _quiet():
    """No progress bars or info chatter from transformers while loading (``--json`` stays clean)."""
    import transformers.utils.logging as tlog

    level = tlog.get_verbosity()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        tlog.enable_progress_bar()


@contextlib.contextmanager
def _load_errors(source: Source, what: str):
    """The library's load failures as one-line user errors."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as e:  # online: no such repository, a gated model without a token, a server error
        raise ModelError(f"cannot load {source.ref} from the Hub: {_first_line(e)}") from None
    except OSError as e:  # missing files: a partly cached model, an incomplete folder
        if source.local_only:
            fix = (f"the folder {source.ref} is incomplete; copy the whole folder again" if source.is_folder else
                   f"on a machine with internet run `{hub.download_command(source.ref)}` and pass --model PREFIX:DIR")
            raise OfflineError(f"cannot load {source.ref} from local files ({_first_line(e)}); {fix}") from None
        raise ModelError(f"cannot load {source.ref}: {_first_line(e)}") from None
    except (ValueError, KeyError) as e:  # an Auto class that has no model of this kind for the config
        raise ModelError(f"{source.ref} cannot do {what}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


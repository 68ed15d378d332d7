"""Where a pipeline's files come from: a local folder, or a Hugging Face Hub id through the Hub's own cache.

Nothing here imports torch or diffusers, so a model that cannot be had fails before any heavy import:
offline (``HF_HUB_OFFLINE=1``, or no route to the Hub) a model that is neither a folder nor in the
cache is refused in well under a second, naming the id, the command that fetches it, and the folder
to pass instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, OfflineError
# The rules shared with hf: models and data sets (recogen/hub.py); imported here by their old names too.
from ..hub import PROBE_S, REPO_ID, download_command, hub_offline, hub_reachable  # noqa: F401
from ..hub import looks_like_path as _looks_like_path

INDEX = "model_index.json"  # the file that makes a folder (or a Hub repo) a diffusers pipeline


@dataclass(frozen=True)
class Source:
    """A resolved model reference. ``ref`` is what the user gave; ``location`` is what to hand to
    ``from_pretrained`` (a folder path, or the Hub id); ``local_only`` forbids the network
    (offline, or no route to the Hub, with the files already cached)."""

    ref: str
    location: str
    is_folder: bool
    local_only: bool
    folder: Path | None  # the files on disk: the folder, or the cached snapshot (None until downloaded)


def resolve(ref: str | os.PathLike) -> Source:
    """Resolve ``ref`` (a pipeline folder or a Hub id) without loading anything.

    A folder must hold ``model_index.json``. A Hub id is looked up in the Hub cache; when it is not
    there and the Hub cannot be reached (``HF_HUB_OFFLINE=1`` or no network), an :class:`OfflineError`
    says how to get it.
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / INDEX).is_file()):
            raise ModelError(f"{text} is not a diffusers pipeline folder (no {INDEX} in it); pass a folder made by "
                             f"`save_pretrained` or `hf download ID --local-dir DIR`, or a Hub id such as "
                             f"stable-diffusion-v1-5/stable-diffusion-v1-5")
        return Source(text, str(path), True, True, path)
    if _looks_like_path(text):
        raise ModelError(f"no such folder: {text}; pass a diffusers pipeline folder or a Hub id (owner/name)")
    if not REPO_ID.match(text) or "--" in text or ".." in text:
        raise ModelError(f"{text!r} is neither a folder nor a valid Hub id (owner/name)")
    from huggingface_hub import constants  # light; the rest of huggingface_hub is imported only when cached

    offline = hub_offline()
    cached = None
    # The cache's documented layout: HF_HUB_CACHE/models--OWNER--NAME/. No such folder: nothing cached.
    if (Path(constants.HF_HUB_CACHE) / f"models--{text.replace('/', '--')}").is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(text, INDEX)
    if isinstance(cached, str):
        # In the cache: offline it loads from there only; online the library may check for a newer revision.
        return Source(text, text, False, offline or not hub_reachable(), Path(cached).parent)
    why = "HF_HUB_OFFLINE=1 is set" if offline else (None if hub_reachable() else "the Hub is not reachable (no network)")
    if why:
        raise OfflineError(
            f"model {text} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. On a machine "
            f"with internet run `{download_command(text)}`, copy DIR here and pass --model DIR (or, online, run "
            f"the same command without --local-dir to fill the cache)")
    return Source(text, text, False, False, None)


def offline_hint(source: Source) -> str:
    """The advice added to a load that failed for want of files (a cache holding only part of a model)."""
    if source.is_folder:
        return f"the folder {source.ref} is incomplete; copy the whole folder again"
    return (f"on a machine with internet run `{download_command(source.ref)}`, copy DIR here and pass --model DIR")

"""Hugging Face Hub references, shared by pipelines (diffusers), model sources (``hf:ID``) and data sets
(``--data hf:NAME``): telling ids from paths, knowing when the Hub cannot be reached, and failing fast.

The Hub's own clients retry with back-off for a minute when there is no network; recogen instead decides
up front, in well under a second and without importing torch, transformers or datasets: offline
(``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1`` for data, or no route to the Hub) and not cached is an
:class:`~recogen.errors.OfflineError` naming the id and the command that fetches it; offline and cached
loads from the cache only (:func:`libraries_offline`).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from .errors import OfflineError

# A Hub id: "name" or "owner/name" (the library validates it fully when it loads; this is only to tell
# ids from mistyped paths without importing the library, which takes longer than failing should).
REPO_ID = re.compile(r"^[A-Za-z0-9_.-]{1,96}(/[A-Za-z0-9_.-]{1,96})?$")
PROBE_S = 0.5  # how long to wait for the Hub's address and port before calling the network absent
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub id (``name`` or ``owner/name``)."""
    return bool(REPO_ID.match(text)) and "--" not in text and ".." not in text


def hub_offline(datasets: bool = False) -> bool:
    """``HF_HUB_OFFLINE`` (and, with ``datasets``, ``HF_DATASETS_OFFLINE``) as the libraries read them,
    but at call time: tests and users set them after the libraries were imported."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(n, "").strip().upper() in _TRUE for n in names)


def hub_reachable(timeout: float = PROBE_S) -> bool:
    """Whether the Hub's host answers on its port within ``timeout`` seconds. Name lookup runs in a
    thread because ``socket`` timeouts do not cover it, and a machine without network can stall there."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.1)
    return bool(ok)


def looks_like_path(ref: str) -> bool:
    """A reference that can only be a path: Hub ids are ``name`` or ``owner/name``."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


def download_command(repo_id: str, repo_type: str = "model") -> str:
    """The command that copies a Hub repository into a folder: ``hf`` (huggingface_hub 1.0 and later), or
    ``huggingface-cli`` where only the older tool is installed."""
    tool = "huggingface-cli" if shutil.which("huggingface-cli") and not shutil.which("hf") else "hf"
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return f"{tool} download {repo_id}{kind} --local-dir DIR"


def hub_cache_dir(repo_id: str, repo_type: str = "model") -> Path:
    """The folder the Hub cache keeps ``repo_id`` in (its documented layout: ``models--OWNER--NAME``)."""
    from huggingface_hub import constants  # light: the rest of huggingface_hub loads only when used

    return Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def offline_reason(datasets: bool = False) -> str | None:
    """Why the Hub cannot be used now (``"HF_HUB_OFFLINE=1 is set"``, no network), or None when it can."""
    if hub_offline(datasets):
        return "offline mode is set (HF_HUB_OFFLINE=1" + (" or HF_DATASETS_OFFLINE=1)" if datasets else ")")
    return None if hub_reachable() else "the Hub is not reachable (no network)"


def require_cached(repo_id: str, cached: bool, *, what: str, where: Path | str, instead: str,
                   repo_type: str = "model", also: str = "", fill: str = "") -> bool:
    """Whether to load ``repo_id`` from the cache only. Online: False. Offline (see :func:`offline_reason`)
    and ``cached``: True. Offline and not cached: an OfflineError naming the id, the cache, the command
    that fetches it (``also``: another way, said after it), ``instead`` (what to pass once it is copied
    here) and ``fill`` (how to fill the cache instead; by default the same command without --local-dir)."""
    why = offline_reason(datasets=repo_type == "dataset")
    if why is None:
        return False
    if cached:
        return True
    fill = fill or "run the same command without --local-dir to fill the cache"
    raise OfflineError(
        f"{what} {repo_id} is not in the Hugging Face cache ({where}) and {why}. On a machine with internet run "
        f"`{download_command(repo_id, repo_type)}`{f' (or {also})' if also else ''}, copy DIR here and pass "
        f"{instead} (or, online, {fill})")


def datasets_cache() -> Path:
    """``datasets``' own cache folder (``HF_DATASETS_CACHE``, else ``HF_HOME/datasets``), found as the
    library finds it but without importing it (about 2 s): an offline failure must come before that."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets").expanduser()


def dataset_cached(name: str) -> bool:
    """Whether ``datasets`` holds its prepared copy of the set (``owner___name``, the name in snake case:
    compared without underscores and case, enough to say "something is there"; the library then decides).
    Offline, ``datasets`` loads a Hub id only from that copy, not from files in the Hub cache."""
    root = datasets_cache()
    key = name.replace("/", "").replace("_", "").lower()
    return root.is_dir() and any(e.is_dir() and e.name.replace("_", "").lower() == key for e in root.iterdir())


def require_dataset(name: str) -> bool:
    """:func:`require_cached` for the Hub data set ``name`` (``--data hf:NAME``)."""
    return require_cached(
        name, dataset_cached(name), what="data set", where=datasets_cache(), repo_type="dataset",
        also=f"in Python datasets.load_dataset({name!r}).save_to_disk(DIR)", instead="--data hf:DIR",
        fill=f"run this command once with --data hf:{name}: datasets keeps it in its cache")


def require_model(ref: str, filename: str, instead: str) -> tuple[bool, Path | None]:
    """:func:`require_cached` for the Hub model ``ref``, judged by its ``filename`` (e.g. config.json) in
    the Hub cache: (load from the cache only?, the cached file or None)."""
    cached = None
    if hub_cache_dir(ref).is_dir():  # the cache's own folder: without it nothing is cached
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, filename)
    found = Path(cached) if isinstance(cached, str) else None
    return require_cached(ref, found is not None, what="model", where=hub_cache_dir(ref).parent, instead=instead), found


def preflight(data: str | None, model: str | None) -> None:
    """The ``hf:`` data set and model of a training command, checked before torch and the libraries load:
    offline and not cached fails here in well under a second (the loaders check again, and read them)."""
    if data and data.startswith("hf:"):
        name = data[3:].partition("?")[0]
        if name and not Path(name).expanduser().exists() and not looks_like_path(name):
            name = name.partition(":")[0]
            if is_repo_id(name):
                require_dataset(name)
    if model and model.startswith("hf:"):
        ref = model[3:]
        if ref and not Path(ref).expanduser().exists() and not looks_like_path(ref) and is_repo_id(ref):
            require_model(ref, "config.json", instead="--model hf:DIR")


@contextmanager
def libraries_offline(on: bool = True) -> Iterator[None]:
    """Make huggingface_hub (and datasets, when imported) read only their caches inside the block: they
    read ``HF_HUB_OFFLINE`` once at import, so a network found absent later must be told to them."""
    if not on:
        yield
        return
    import sys

    from huggingface_hub import constants

    mods = [constants] + ([sys.modules["datasets.config"]] if "datasets.config" in sys.modules else [])
    saved = [m.HF_HUB_OFFLINE for m in mods]
    for m in mods:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, v in zip(mods, saved):
            m.HF_HUB_OFFLINE = v

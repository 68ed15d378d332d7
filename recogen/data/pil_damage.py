"""Pillow's warnings that mean an image file is damaged, raised as errors (thread-safely).

Pillow decodes some damaged files with only a warning and returns what it could read: a TIFF whose
directory points past the end of the file, a JPEG with a malformed MPO index or corrupt EXIF, a PNG
with an invalid APNG control chunk, an ICO whose image is not the size its directory says. A model
would then predict on garbage. :func:`refuse_damaged` turns exactly these warnings into exceptions
(the ``UserWarning`` itself is raised, from inside Pillow); the decoders catch them with their other
"cannot read" errors. Pillow's harmless warnings are left alone: "Palette images with Transparency
expressed in bytes should be converted to RGBA images" and "Couldn't allocate palette entry for
transparency" (conversions), "XMP data cannot be read without defusedxml", DecompressionBombWarning
(the size limits handle it), and the ones Pillow gives when saving or at import.

Why a filter entry and not ``warnings.catch_warnings()`` around each decode: before Python 3.14,
``catch_warnings`` swaps the module-global filter list and puts the old one back on exit, so two
threads using it at once (the service decodes uploads in a thread pool) drop or leak each other's
filters and record each other's warnings. An entry of the filter list is only *read* when a warning
is issued, which is the same in every thread; and the "error" action raises before the per-module
"already warned" registry is consulted, so a second damaged file is refused like the first.

The entries match by module and message, so nothing else changes: other UserWarnings, from Pillow or
anyone, are still only shown. They are (re)installed before each decode, not once at import, because
code that wraps a call in ``catch_warnings`` (pytest around every test, maybe a host application)
restores the list as it was, dropping an entry added meanwhile; re-checking costs a scan of a short
list, and the list is written only when the entries are missing or something that could match the
same warnings has been put in front of them (e.g. ``warnings.simplefilter("ignore")``).
"""
from __future__ import annotations

import re
import threading
import warnings

# (module that warns, start of the message or "" for any, what it means). All are plain UserWarnings.
DAMAGE_WARNINGS: tuple[tuple[str, str, str], ...] = (
    # Reading a TIFF directory (TIFF files, and the EXIF and MPO blocks of JPEGs, which are TIFF
    # directories): tag data past the end of the file, short reads ("Corrupt EXIF data", "Truncated
    # File Read"), offsets too large, a single-valued tag with several values. Every warning of this
    # module is about a malformed directory.
    ("PIL.TiffImagePlugin", "", "a truncated or malformed TIFF/EXIF directory"),
    ("PIL.JpegImagePlugin", "Image appears to be a malformed MPO file", "a malformed MPO index in a JPEG"),
    ("PIL.PngImagePlugin", "Invalid APNG", "an invalid APNG control chunk"),
    ("PIL.IcoImagePlugin", "Image was not the expected size", "an ICO image of another size than its directory says"),
    ("PIL.Image", "Possibly corrupt EXIF MakerNote data", "a truncated EXIF maker note"),
)


def _entry(module: str, message: str) -> tuple:
    """The filter entry ``warnings.filterwarnings("error", message, UserWarning, module)`` makes (Python
    3.11: (action, compiled message or None, category, compiled module or None, lineno)); compiled
    patterns compare equal when their text and flags do."""
    return ("error", re.compile(re.escape(message), re.I) if message else None, UserWarning,
            re.compile(re.escape(module) + r"\Z"), 0)


_ENTRIES = [_entry(module, message) for module, message, _ in DAMAGE_WARNINGS]
_lock = threading.Lock()  # two decoding threads finding the entries gone install them once


def _in_effect(filters: list) -> bool:
    """Whether all our entries come before any other entry that could match a UserWarning."""
    missing = len(_ENTRIES)
    for entry in filters:
        if entry in _ENTRIES:
            missing -= 1
            if not missing:
                return True
        elif issubclass(UserWarning, entry[2]):
            return False
    return False


def refuse_damaged() -> None:
    """Make Pillow's damage warnings (:data:`DAMAGE_WARNINGS`) raise, in every thread; call it before
    decoding. Cheap when they already do (the usual case): then nothing is written."""
    if _in_effect(warnings.filters):
        return
    with _lock:
        if not _in_effect(warnings.filters):
            for module, message, _ in reversed(DAMAGE_WARNINGS):  # each goes to the front: keep their order
                warnings.filterwarnings("error", message=re.escape(message) if message else "", category=UserWarning,
                                        module=re.escape(module) + r"\Z")


def damage_reason(warning: Warning) -> str:
    """The part of an error message that says why a file raising ``warning`` is refused."""
    return f"the file is damaged (Pillow: {' '.join(str(warning).split())})"


refuse_damaged()  # at import, normally in the main thread before any pool exists; and again before each decode

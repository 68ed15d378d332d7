"""The options of the foundation models, read the same way from the CLI and the Python API: labels,
prompt templates, SAM's points and boxes. Light (no torch): the CLI checks them as it parses, so a typo
is reported before a large model loads."""
from __future__ import annotations

import argparse
import re
from typing import Any, Callable

from ..errors import ConfigError

PROMPT_TEMPLATE = "a photo of a {}."  # CLIP's own prompt for ImageNet labels


def parse_labels(labels: Any, least: int = 1) -> list[str]:
    """``"cat,dog"`` or a list -> ``["cat", "dog"]``: stripped, none empty, no duplicates, at least ``least``."""
    items = labels.split(",") if isinstance(labels, str) else list(labels or [])
    out = [str(x).strip() for x in items if str(x).strip()]
    if len(out) < least:
        raise ConfigError(f"--labels needs at least {least} label(s), e.g. --labels \"cat,dog,car\"; got {labels!r}")
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise ConfigError(f"--labels has duplicates: {', '.join(dup)}")
    return out


def prompts(labels: list[str], template: str | None) -> list[str]:
    """Each label put into ``template`` (``{}`` marks where; default "a photo of a {}.")."""
    template = PROMPT_TEMPLATE if template is None else template
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ConfigError(f"--prompt-template must contain {{}} exactly once (where the label goes), got {template!r}")
    return [template.replace("{}", label) for label in labels]


def parse_points(points: Any) -> list[tuple[float, float, int]]:
    """``"x,y;x,y,0"`` or a list of pairs/triples -> [(x, y, label)]: label 1 (default) is on the object,
    0 is not."""
    items = [p for p in points.split(";") if p.strip()] if isinstance(points, str) else list(points or [])
    out = []
    for p in items:
        v = _numbers(p, "--points", "X,Y or X,Y,LABEL")
        if len(v) not in (2, 3) or (len(v) == 3 and v[2] not in (0, 1)):
            raise ConfigError(f"--points: each point is X,Y or X,Y,LABEL with LABEL 1 (on the object) or 0 (not); "
                              f"got {p!r}")
        out.append((v[0], v[1], int(v[2]) if len(v) == 3 else 1))
    return out


def parse_boxes(boxes: Any) -> list[tuple[float, float, float, float]]:
    """``"x0,y0,x1,y1;..."`` or a list of 4-tuples -> [(x0, y0, x1, y1)], each with x0 < x1 and y0 < y1."""
    items = [b for b in boxes.split(";") if b.strip()] if isinstance(boxes, str) else list(boxes or [])
    out = []
    for b in items:
        v = _numbers(b, "--boxes", "X0,Y0,X1,Y1")
        if len(v) != 4 or not (v[0] < v[2] and v[1] < v[3]):
            raise ConfigError(f"--boxes: each box is X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 (pixels); got {b!r}")
        out.append((v[0], v[1], v[2], v[3]))
    return out


def _numbers(item: Any, flag: str, form: str) -> list[float]:
    try:
        return [float(x) for x in (item.split(",") if isinstance(item, str) else item)]
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: expected {form} (numbers in pixels), got {item!r}") from None


def unit_interval(text: str) -> float:
    """argparse type of a score threshold: a number from 0 to 1 (checked while parsing, before a large
    model loads)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {v:g}")
    return v


def argtype(parse: Callable[[str], Any], **kw: Any) -> Callable[[str], str]:
    """An argparse ``type`` that checks a value with ``parse`` (its ConfigError becomes argparse's own
    one-line error) and keeps the text: the family's function reads it again."""
    def check(text: str) -> str:
        try:
            parse(text, **kw)
        except ConfigError as e:  # argparse names the flag itself: "argument --points: ..."
            raise argparse.ArgumentTypeError(re.sub(r"^--[a-z-]+:? ", "", str(e))) from None
        return text

    check.__name__ = parse.__name__  # argparse names the type in some messages
    return check


def check_template(template: str) -> None:
    """A ConfigError unless ``template`` holds ``{}`` exactly once."""
    prompts(["x"], template)

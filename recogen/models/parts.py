"""Attribute names a library model (``tv:NAME``/``timm:NAME``, models/sources.py) carries so that weight
loading and fine-tuning find its parts without knowing the architecture."""

HEAD_ATTR = "recogen_head"  # qualified names of the classifier-head modules, e.g. ("fc",) or ("head.fc",)
STEM_ATTR = "recogen_stem"  # qualified name of the first conv (folded onto other channel counts)
SOURCE_ATTR = "recogen_source"  # the name it was built from, e.g. "tv:resnet18" (for messages)

"""Image classifiers. Each exposes ``forward_features`` and ``forward_head`` (as in timm)."""
from . import cnn_rnn, resnet, seed_cnn, speednet, vit  # noqa: F401 - registers the builders

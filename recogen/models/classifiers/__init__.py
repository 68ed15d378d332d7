"""Image classifiers. Each exposes ``forward_features`` and ``forward_head`` (as in timm)."""

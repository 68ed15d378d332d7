"""Semantic segmentation networks. Importing this package registers the builders."""

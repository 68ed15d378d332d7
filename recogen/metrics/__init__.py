"""Metric wrappers and reports (torchmetrics + sklearn underneath)."""

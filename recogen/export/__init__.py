"""Model export: the portable safetensors + JSON model card (ONNX/TorchScript come later)."""

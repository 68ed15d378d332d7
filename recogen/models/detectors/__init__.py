"""Object detectors (torchvision). Importing this package registers the builders."""

"""Object detectors (torchvision, and a small FCOS for CPUs). Importing this package registers the builders."""
from . import small, torchvision_detectors  # noqa: F401

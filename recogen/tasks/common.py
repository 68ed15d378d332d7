"""TEMPORARY during the issue-11 redesign: the old names, now defined in runs/callbacks/trainer."""
from ..data.batches import EpochSeeded, TensorBatches
from ..utils import check_writable_folder  # noqa: F401
from .callbacks import *  # noqa: F401,F403
from .callbacks import _atomic_checkpoint_io, _callbacks, _resumed_runs, lightning  # noqa: F401
from .runs import *  # noqa: F401,F403
from .runs import _first_line, _saved_epochs  # noqa: F401
from .trainer import *  # noqa: F401,F403


def EpochBatches(ds, batch_size, **kw):  # noqa: N802
    return EpochSeeded(TensorBatches(ds, batch_size, **kw))

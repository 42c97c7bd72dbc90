"""The user's model inside the wrappers that training code puts around it.

``torch.compile`` returns an ``OptimizedModule`` holding the model as ``_orig_mod``;
``nn.DataParallel`` and ``DistributedDataParallel`` (BasicSR wraps ``net_g`` in one) hold it
as ``.module``. Every verb of the plugin works on the model inside.
"""

from __future__ import annotations

import sys

from torch import nn

PARALLEL_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _is_compiled(model: nn.Module) -> bool:
    if "torch._dynamo" not in sys.modules:  # nothing was compiled in this process
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(model, OptimizedModule)


def unwrap(model: nn.Module) -> nn.Module:
    """``model`` without its ``torch.compile``/``DataParallel``/DDP wrappers, at any depth."""
    while True:
        if _is_compiled(model):
            model = model._orig_mod
        elif isinstance(model, PARALLEL_WRAPPERS):
            model = model.module
        else:
            return model

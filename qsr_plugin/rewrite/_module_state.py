"""Undo what running or tracing a forward pass writes into a model's modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def preserved_module_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's attributes, parameters, buffers and children on exit.

    Symbolic tracing runs ``forward`` with proxies: a forward that assigns an attribute
    (BasicSR's SwinIR does ``self.mean = self.mean.type_as(x)``) would otherwise leave a
    ``torch.fx.Proxy`` behind and break every later call. Tensor contents changed in place
    are not covered; run probes in eval mode under ``torch.no_grad()``.
    """
    saved = [
        (
            module,
            dict(module.__dict__),
            dict(module._parameters),
            dict(module._buffers),
            dict(module._modules),
        )
        for module in model.modules()
    ]
    try:
        yield
    finally:
        for module, attributes, parameters, buffers, children in saved:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            for container, content in (
                (module._parameters, parameters),
                (module._buffers, buffers),
                (module._modules, children),
            ):
                container.clear()
                container.update(content)

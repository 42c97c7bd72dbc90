"""Module replacements that are all undone if any step of a rewrite fails."""

from __future__ import annotations

from torch import nn


class ModuleSwaps:
    """Replace submodules by qualified name; :meth:`undo` restores them in reverse order."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._done: list[tuple[nn.Module, str, nn.Module]] = []

    def replace(self, path: str, new: nn.Module) -> nn.Module:
        """Put ``new`` at ``path`` and return the module it replaced."""
        parent_path, _, name = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        old = parent._modules[name]
        parent._modules[name] = new
        self._done.append((parent, name, old))
        return old

    def undo(self) -> None:
        """Put every replaced module back."""
        while self._done:
            parent, name, old = self._done.pop()
            parent._modules[name] = old

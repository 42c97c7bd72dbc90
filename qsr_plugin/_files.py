"""Writing output files whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; moves it onto ``path`` if the block succeeds.

    The temporary file keeps ``path``'s suffix (so writers that infer the format from the
    name still work) and is removed if the block raises, so a failed write never leaves a
    partial file behind. The result gets the permissions of a newly created file.

    Raises:
        OSError: the folder of ``path`` cannot be written (the message names ``path``).
    """
    path = Path(path)
    try:
        handle, name = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent
        )
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror}; choose a writable folder") from error
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

"""Writing a file so that readers see either the old file or the complete new one.

The bytes go to a temporary file in the destination's directory, are flushed and fsync-ed,
and the temporary file is renamed over the destination (``os.replace``, atomic on POSIX
and Windows within one filesystem); then the directory is fsync-ed so the rename survives a
crash. If anything fails, the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path.

    Args:
        path: the destination file; its directory must exist.
        data: the complete file content.

    Raises:
        FileNotFoundError: the directory does not exist.
        IsADirectoryError: ``path`` is a directory.
        PermissionError: the directory is not writable.
        OSError: writing failed (disk full, ...); nothing is left at ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomically(folder / "model.bin", b"data").read_bytes()
        b'data'
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {path}: the directory {directory} does not exist; create it first"
        )
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; give a file name")
    mode = path.stat().st_mode & 0o777 if path.exists() else _default_mode()
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as error:
        raise PermissionError(
            f"cannot write {path}: no permission to create files in {directory}"
        ) from error
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write {path}: creating a file in {directory} failed ({error})"
        ) from error
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and not isinstance(error, PermissionError):
            raise OSError(
                error.errno, f"writing {path} failed ({error}); nothing was written there"
            ) from error
        raise
    _fsync_directory(directory)
    return path

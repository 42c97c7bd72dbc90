"""Writing output files whole or not at all.

The content goes to a temporary file in the destination's folder, which is flushed and
fsync-ed, then renamed over the destination (``os.replace``, atomic within one filesystem);
the folder is fsync-ed so the rename survives a crash. If anything fails, the temporary
file is removed and the destination is untouched: readers see the old file or the new one.

A process killed while writing (``kill -9``, power loss) cannot remove its temporary file:
it stays beside the destination as ``.<stem>.<pid>.<random><suffix>``. The next write to
that destination removes such files whose process no longer runs (POSIX; on other systems
they stay until removed by hand). The destination itself is never left half written.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files that killed writes to ``path`` left behind (POSIX)."""
    if os.name != "posix":
        return
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(\d+)\.[^.]+{re.escape(path.suffix)}")
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*"):
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_file() and not _is_running(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _temporary_beside(path: Path) -> Path:
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {path}: the directory {directory} does not exist; create it first"
        )
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; give a file name")
    _remove_stale_temporaries(path)
    try:
        fd, name = tempfile.mkstemp(
            dir=directory, prefix=f".{path.stem}.{os.getpid()}.", suffix=path.suffix
        )
    except PermissionError as error:
        raise PermissionError(
            f"cannot write {path}: no permission to create files in {directory}"
        ) from error
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write {path}: creating a file in {directory} failed ({error})"
        ) from error
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; moves it onto ``path`` if the block succeeds.

    The temporary file keeps ``path``'s suffix, so writers that infer the format from the
    name (matplotlib, PIL) still work. An existing file's permissions are kept.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        PermissionError: the folder is not writable.
        OSError: writing failed (disk full, ...); nothing was written at ``path``.

    Example:
        >>> import pathlib, tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.txt"
        >>> with atomic_output(target) as temporary:
        ...     _ = temporary.write_text("PSNR 32.1")
        >>> target.read_text()
        'PSNR 32.1'
    """
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else _new_file_mode()
    temporary = _temporary_beside(path)
    try:
        yield temporary
        _fsync(temporary, os.O_RDONLY)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, PermissionError):
            raise OSError(
                error.errno, f"writing {path} failed ({error}); nothing was written there"
            ) from error
        raise
    if os.name == "posix":  # folders can be opened for fsync only there
        _fsync(path.parent, os.O_RDONLY)


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`); return the path."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)

"""Keep torch's "No CUDA runtime is found" warning out of CPU runs.

Compiling the quantizer kernels (``torch.compile`` on CPU) imports
``torch.utils.cpp_extension``, whose import looks for a CUDA toolkit and, when ``nvcc`` or
``CUDA_HOME`` is there but no CUDA runtime is, logs that warning. It concerns building CUDA
extensions, which qsr_plugin never does, so this one message is dropped; every other message
of that logger still shows.
"""

from __future__ import annotations

import logging

LOGGER_NAME = "torch.utils.cpp_extension"
MESSAGE_START = "No CUDA runtime is found"


class _NoCudaRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(MESSAGE_START)


def drop_no_cuda_runtime_warning() -> None:
    """Install the filter on torch's cpp_extension logger (once)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, _NoCudaRuntimeFilter) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeFilter())

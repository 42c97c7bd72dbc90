"""Accuracy and speed benchmarks of qsr_plugin against other quantizers and QAT libraries.

Run ``python -m benchmarks.run --quick`` (or ``make benchmarks-quick``); see README.md.
The image sets (Set5, Set14, T91) are read from ``$QSR_DATA_DIR``, by default
``../shared/data`` beside the repository.
"""

import os
from pathlib import Path

os.environ.setdefault("QSR_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

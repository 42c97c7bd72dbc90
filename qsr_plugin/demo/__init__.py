"""``qsr demo``: QuantSR end to end on real photos, small enough for a laptop CPU.

Example:
    >>> from qsr_plugin.demo import DemoSettings, run_demo
    >>> result = run_demo(DemoSettings(bits=(4, 2)))
    >>> print(result.table)
"""

from .run import DemoResult, build_srresnet, run_demo
from .settings import DemoInputError, DemoSettings

__all__ = ["DemoInputError", "DemoResult", "DemoSettings", "build_srresnet", "run_demo"]

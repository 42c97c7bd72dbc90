"""Test with a BasicSR option file; the same as the ``qsr-test`` command.

    python integrations/basicsr/test.py -opt recipes/test_quantsr_t_x4.yml

Same flags as BasicSR's ``basicsr/test.py``; results land under the current directory.
"""

import sys

from qsr_plugin.integrations.basicsr.entry import test_main

if __name__ == "__main__":
    sys.exit(test_main())

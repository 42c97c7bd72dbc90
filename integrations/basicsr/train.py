"""Train with a BasicSR option file; the same as the ``qsr-train`` command.

    python integrations/basicsr/train.py -opt recipes/quantsr_t_x4.yml

Same flags as BasicSR's ``basicsr/train.py``; experiments land under the current directory.
"""

import sys

from qsr_plugin.integrations.basicsr.entry import train_main

if __name__ == "__main__":
    sys.exit(train_main())

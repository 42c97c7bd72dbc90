"""Make BasicSR's GTmod12 / LRbicx<s> folders from HR images (MATLAB bicubic downscaling).

    python integrations/basicsr/prepare_data.py ../shared/data/T91/HR datasets/T91 --scales 2 4
    python integrations/basicsr/prepare_data.py ../shared/data/Set5/HR datasets/Set5

See qsr_plugin/integrations/basicsr/prepare_data.py and recipes/README.md.
"""

import sys

from qsr_plugin.integrations.basicsr.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())

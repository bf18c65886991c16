#!/usr/bin/env python
"""Draw LESA's attention heads for image files: ``python evaluation/visualize_attention.py --run RUN --images DIR``.

The tool lives in :mod:`mll_tf.cli.visualize_attention`; ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.visualize_attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

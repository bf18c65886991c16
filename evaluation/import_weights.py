#!/usr/bin/env python
"""Import released weights: ``python evaluation/import_weights.py --checkpoint CKPT --run-dir RUN [run options]``.

The tool lives in :mod:`mll_tf.cli.import_weights` (also installed as ``mll-import_weights``); ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.import_weights import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

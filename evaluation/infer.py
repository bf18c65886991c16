#!/usr/bin/env python
"""Predict labels for new images: ``python evaluation/infer.py --run RUN --images DIR --out predictions.csv``.

The tool lives in :mod:`mll_tf.cli.infer` (also installed as ``mll-infer``); ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

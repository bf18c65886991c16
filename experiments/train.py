#!/usr/bin/env python
"""Train a method on a dataset: ``python experiments/train.py --method lesa --dataset openclipart``.

The tool lives in :mod:`mll_tf.cli.train` (also installed as ``mll-train``); ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

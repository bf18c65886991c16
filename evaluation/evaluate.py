#!/usr/bin/env python
"""Evaluate a trained run: ``python evaluation/evaluate.py --run runs/lesa_openclipart``.

The tool lives in :mod:`mll_tf.cli.evaluate` (also installed as ``mll-evaluate``); ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a trained run: ``python evaluation/export.py --run RUN --format savedmodel|onnx|litert|openvino``.

The tool lives in :mod:`mll_tf.cli.export` (also installed as ``mll-export``); ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Extract backbone feature maps into ZLIB TFRecords: ``python extract/build_tfrecords.py --dataset openclipart``.

The tool lives in :mod:`mll_tf.cli.extract` (also installed as ``mll-extract``); ``--help`` lists its flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.extract import main, store_dir  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())

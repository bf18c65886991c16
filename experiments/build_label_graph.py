#!/usr/bin/env python
"""Build a label graph for IMCL's G or an ML-GCN adjacency: ``python experiments/build_label_graph.py --help``.

The tool lives in :mod:`mll_tf.cli.label_graph` (also installed as ``mll-label-graph``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.cli.label_graph import main, read_labels  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())

"""Numerical ops shared by the methods (no Keras layers here).

* :func:`batched_omp`: IMCL's greedy joint sparse coding (docs/imcl.md §2).
"""

from mll_tf.ops.omp import batched_omp

__all__ = ["batched_omp"]

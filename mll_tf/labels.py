"""Label conventions and converters.

mll_tf stores and computes with ONE convention everywhere:

======  =========
value   meaning
======  =========
``1``   present (positive)
``0``   absent (negative)
``-1``  unknown (not annotated)
======  =========

Labels are ``int8`` arrays of shape ``[N, C]`` (or ``[C]``). References that
use another convention are converted at the edges with the functions below
(docs/labels_and_data.md §1):

* LESA / IMCL (OpenImages, CUB): ``+1`` present, ``-1`` absent, ``0`` unknown.
* CSL: same as mll_tf. DOR-ML: any negative value is unknown.
"""

import numpy as np

POSITIVE = 1
NEGATIVE = 0
UNKNOWN = -1


def from_pm1(y):
    """Convert LESA/IMCL labels {+1, -1, 0=unknown} to mll_tf {1, 0, -1}.

    Args:
        y: array-like of any shape with values in {+1, -1, 0} (any numeric
            dtype; values are compared after rounding).

    Returns:
        ``np.int8`` array of the same shape: ``where(y == 0, -1, (y + 1) / 2)``.

    Raises:
        ValueError: if ``y`` holds a value outside {+1, -1, 0}.

    Source: docs/labels_and_data.md §1.
    """
    y = np.asarray(y)
    r = np.rint(y).astype(np.int64)
    if not np.all(np.isin(r, (-1, 0, 1))) or not np.allclose(r, y):
        bad = np.unique(y[~np.isin(r, (-1, 0, 1)) | (r != y)])[:5]
        raise ValueError(f"from_pm1: expected values in {{+1, -1, 0}}, got {bad.tolist()}")
    return np.where(r == 0, UNKNOWN, (r + 1) // 2).astype(np.int8)


def to_pm1(y):
    """Convert mll_tf labels {1, 0, -1=unknown} to LESA/IMCL {+1, -1, 0}.

    Args:
        y: array-like of any shape with values in {1, 0, -1}.

    Returns:
        ``np.int8`` array of the same shape: ``where(y < 0, 0, 2y - 1)``.

    Raises:
        ValueError: if ``y`` holds a value outside {1, 0, -1}.

    Source: docs/labels_and_data.md §1.
    """
    y = np.asarray(y)
    if not np.all(np.isin(y, (-1, 0, 1))):
        bad = np.unique(y[~np.isin(y, (-1, 0, 1))])[:5]
        raise ValueError(f"to_pm1: expected values in {{1, 0, -1}}, got {bad.tolist()}")
    y = y.astype(np.int64)
    return np.where(y < 0, 0, 2 * y - 1).astype(np.int8)


def validate(y, name="labels"):
    """Check that ``y`` follows the mll_tf convention and return it as int8.

    Raises:
        ValueError: naming ``name`` and the offending values.
    """
    y = np.asarray(y)
    ok = np.isin(y, (-1, 0, 1))
    if not np.all(ok):
        raise ValueError(
            f"{name}: values must be 1 (present), 0 (absent) or -1 (unknown); "
            f"found {np.unique(y[~ok])[:5].tolist()}")
    return y.astype(np.int8)

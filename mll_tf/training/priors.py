"""Class priors for CSL's selective loss: estimation and CSV files by class name.

CSL (Ben-Baruch et al., CVPR 2022; ``ComputePrior`` in Alibaba-MIIL/PartialLabelingCSL
``src/loss_functions/partial_asymmetric_loss.py``) estimates the prior of
class c as the mean predicted probability sigmoid(z_c) over all training
images seen so far, from a temporary model trained in "ignore" mode, and
writes it as ``Classes,avg_pred`` rows. The reference reads the values back
BY ROW POSITION (docs/partial_labels.md §8, item 1); :func:`load_prior_csv` matches
them BY CLASS NAME instead and rejects any mismatch.

NumPy only (no TensorFlow import); tensors are accepted wherever
``np.asarray`` accepts them (eager tensors).
"""

import csv
import math
import os

import numpy as np

__all__ = ["PriorEstimator", "save_prior_csv", "load_prior_csv",
           "PRIOR_CSV_HEADER"]

PRIOR_CSV_HEADER = ("Classes", "avg_pred")   # the reference header


class PriorEstimator:
    """Running mean of the predicted probability per class (CSL ``ComputePrior``).

    After batches x_1..x_T of shapes [B_t, C]::

        prior_c = sum_t sum_i sigmoid(x_t[i, c]) / sum_t B_t

    (``from_logits=False``: the batch already holds probabilities). This is
    the mean over all images seen, not a mean of per-batch means, so batches
    of different sizes are weighted by their size (as the reference's
    ``sum_pred_train / cnt_samples_train``). Sums are kept in float64.

    Args:
        num_classes: int >= 1, C.

    Attributes:
        num_classes: int, C.
        count: int, the number of images seen.

    Raises:
        ValueError: if ``num_classes < 1``.
    """

    def __init__(self, num_classes):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(
                f"PriorEstimator: `num_classes` must be an int >= 1, got "
                f"{num_classes}")
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self):
        """Forget all batches."""
        self._sum = np.zeros(self.num_classes, np.float64)
        self.count = 0

    def update(self, batch, from_logits=True):
        """Add one batch of logits (or probabilities).

        Args:
            batch: float array-like [B, C] (NumPy or eager tensor); logits
                when ``from_logits`` else probabilities in [0, 1].
            from_logits: bool, apply the sigmoid first.

        Raises:
            ValueError: if the shape is not [B, C], a value is NaN (or
                +-inf probabilities), or a probability is outside [0, 1].
        """
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"PriorEstimator.update: expected a [B, {self.num_classes}] "
                f"batch, got shape {x.shape}")
        if np.isnan(x).any():
            raise ValueError("PriorEstimator.update: the batch holds NaN")
        if from_logits:
            probs = 0.5 * (1.0 + np.tanh(0.5 * x))   # stable sigmoid
        else:
            if (x < 0).any() or (x > 1).any():
                raise ValueError(
                    "PriorEstimator.update: probabilities must be in [0, 1] "
                    "(pass from_logits=True for logits)")
            probs = x
        self._sum += probs.sum(axis=0)
        self.count += x.shape[0]

    def result(self):
        """The current prior.

        Returns:
            float32 NumPy array [C], values in [0, 1].

        Raises:
            ValueError: if no image has been seen.
        """
        if self.count == 0:
            raise ValueError("PriorEstimator.result: no batch has been seen")
        return np.clip(self._sum / self.count, 0.0, 1.0).astype(np.float32)

    def save(self, path, class_names):
        """``save_prior_csv(path, class_names, self.result())``."""
        return save_prior_csv(path, class_names, self.result())


def _check_class_names(class_names, where):
    names = list(class_names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{where}: class names must be non-empty strings, got {name!r}")
    seen, dups = set(), []
    for name in names:
        if name in seen and name not in dups:
            dups.append(name)
        seen.add(name)
    if dups:
        raise ValueError(f"{where}: duplicate class names {_show(dups)}")
    return names


def _show(names, limit=10):
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"[{shown}{more}] ({len(names)})"


def _format_value(value):
    # shortest decimal that reads back as the same float32 (e.g. 0.542279)
    return np.format_float_positional(np.float32(value), unique=True,
                                      trim="0")


def save_prior_csv(path, class_names, prior):
    """Write a prior as ``Classes,avg_pred`` rows (the reference format).

    The header is ``Classes,avg_pred``; one row per class in the given
    order, the value printed as the shortest decimal that reads back as the
    same float32. Names containing commas or quotes are quoted (csv module).
    Parent directories are created.

    Args:
        path: str or path-like, the CSV file to write.
        class_names: sequence of C unique non-empty str.
        prior: float array-like [C], values in [0, 1].

    Returns:
        str, ``path``.

    Raises:
        ValueError: if the lengths differ, a name is empty/duplicated or
            not a str, or a value is outside [0, 1] or NaN.
    """
    path = os.fspath(path)
    where = f"save_prior_csv({path!r})"
    names = _check_class_names(class_names, where)
    values = np.asarray(prior, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] != len(names):
        raise ValueError(
            f"{where}: `prior` must have shape [{len(names)}] (one value per "
            f"class name), got {values.shape}")
    bad = [n for n, v in zip(names, values) if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"{where}: values outside [0, 1] for classes "
                         f"{_show(bad)}")
    import io

    from mll_tf.training.atomic import write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PRIOR_CSV_HEADER)
    for name, value in zip(names, values):
        writer.writerow([name, _format_value(value)])
    write_text(path, buf.getvalue())   # parent folders are created; a kill leaves the old file
    return path


def load_prior_csv(path, class_names):
    """Read a ``Classes,avg_pred`` prior and order it BY CLASS NAME.

    The file must have the header ``Classes,avg_pred`` and exactly one row
    ``name,value`` per class of ``class_names`` (any row order; names are
    compared exactly, without stripping; blank lines are skipped; a UTF-8
    BOM is accepted). Unlike the reference, which uses the values by row
    position, a file for another class list is rejected.

    Note: the reference's committed ``outputs/priors/prior_fpc_1000.csv``
    ends with a stray one-field row (``1542867``); it must be removed before
    loading.

    Args:
        path: str or path-like, the CSV file.
        class_names: sequence of C unique non-empty str, the model's class
            order.

    Returns:
        float32 NumPy array [C], ``prior[i]`` = the value of
        ``class_names[i]``, in [0, 1].

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and the classes, if the header is wrong,
            a row does not have 2 fields, a value is not a number, NaN or
            outside [0, 1], a class appears more than once, a class of
            ``class_names`` is missing, or the file holds classes not in
            ``class_names``; or if ``class_names`` has duplicates.
    """
    path = os.fspath(path)
    where = f"load_prior_csv({path!r})"
    names = _check_class_names(class_names, where)
    import io

    from mll_tf.data import fs

    with fs.open_file(path, "rb") as f:   # any tf.io.gfile path; a BOM is dropped
        rows = list(csv.reader(io.StringIO(f.read().decode("utf-8-sig"), newline="")))
    if not rows or tuple(rows[0]) != PRIOR_CSV_HEADER:
        got = rows[0] if rows else "an empty file"
        raise ValueError(
            f"{where}: expected the header {','.join(PRIOR_CSV_HEADER)!r}, "
            f"got {got!r}")

    values, order, problems = {}, [], []
    duplicates, bad_values = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            problems.append(f"line {line_no} has {len(row)} field(s) {row!r}, "
                            "expected 'class,value'")
            continue
        name, text = row
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:          # also NaN / non-numbers
            bad_values.append(f"{name!r}={text!r}")
        if name in values:
            if name not in duplicates:
                duplicates.append(name)
            continue
        values[name] = value
        order.append(name)

    if duplicates:
        problems.append(f"duplicate classes {_show(duplicates)}")
    if bad_values:
        problems.append("values that are not numbers in [0, 1]: "
                        + ", ".join(bad_values[:10])
                        + (f" and {len(bad_values) - 10} more"
                           if len(bad_values) > 10 else ""))
    wanted = set(names)
    missing = [n for n in names if n not in values]
    extra = [n for n in order if n not in wanted]
    if missing:
        problems.append(f"missing classes {_show(missing)}")
    if extra:
        problems.append(f"unknown classes (not in class_names) {_show(extra)}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return np.array([values[n] for n in names], dtype=np.float32)

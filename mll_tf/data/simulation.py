"""Partial-label simulation from fully labelled data (CSL's FPC and RPS).

CSL simulates partial annotations on COCO (docs/partial_labels.md §6; reference
``src/helper_functions/coco_simulation.py::simulate_coco`` of
Alibaba-MIIL/PartialLabelingCSL):

* **FPC(N_)** ("fix_per_class"): for every class keep ``min(N_, #pos_c)``
  positives and ``min(N_, #neg_c)`` negatives chosen uniformly at random
  without replacement; every other entry becomes -1.
* **RPS(p)** ("random_per_sample"): every label independently becomes -1
  with probability p (the reference tests ``uniform[0, 1) < p``).

Differences from the reference, all deliberate:

* Randomness comes from ``np.random.default_rng(seed)`` (a seeded
  ``Generator``), not the global legacy ``np.random`` state, so results are
  reproducible for a given seed and NumPy version but the selected entries
  differ from the reference's for the "same" seed. FPC draws classes in
  index order, positives before negatives; RPS draws one uniform per entry
  in row-major order (entry (i, c) uses draw i*C + c), so the result does
  not depend on the internal chunking.
* Inputs may already hold -1 (unknown). These entries stay -1: FPC chooses
  only among the known positives/negatives (so it keeps
  ``min(N_, #known pos_c)``), and RPS never turns -1 into anything else (a
  draw is still consumed for them). The reference assumes complete labels.
* The reference's disabled ``add_one_label`` option (guaranteeing one
  positive/negative per image) is not provided.

Labels use the mll_tf convention (docs/labels_and_data.md §1): int8 ``[N, C]`` with
``1`` present, ``0`` absent, ``-1`` unknown. NumPy only (no TensorFlow).
"""

import numbers
import re

import numpy as np

__all__ = ["simulate_fpc", "simulate_rps", "partial_label_stats", "simulate",
           "parse_scheme"]

_CHUNK_ENTRIES = 1 << 22     # entries per row chunk (bounds temporaries)


def _check_labels(labels, fn, name="labels"):
    """Return ``labels`` as an int8 [N, C] array in {1, 0, -1} or raise."""
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"{fn}: `{name}` must be 2-D [N, C], got shape {y.shape}")
    if y.dtype.kind == "b":
        return y.astype(np.int8)
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{fn}: `{name}` must be numeric, got dtype {y.dtype}")
    if y.size:
        ok = (y == 1) | (y == 0) | (y == -1)
        if not ok.all():
            bad = np.unique(y[~ok])[:5].tolist()
            raise ValueError(
                f"{fn}: `{name}` must hold 1 (present), 0 (absent) or -1 "
                f"(unknown); found {bad}")
    return y.astype(np.int8, copy=False)


def _row_chunks(n_rows, n_cols):
    step = max(1, _CHUNK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _check_seed(seed, fn):
    if seed is not None and (not isinstance(seed, numbers.Integral)
                             or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"{fn}: `seed` must be an int >= 0 or None, got {seed!r}")


def simulate_fpc(labels, num_per_class, seed=0):
    """Fixed-per-class (FPC) simulation: keep N_ positives and N_ negatives per class.

    For every class c, ``min(N_, #pos_c)`` of its positive images and
    ``min(N_, #neg_c)`` of its negative images are drawn uniformly at random
    without replacement; they keep their label, every other entry becomes
    -1. Entries that are -1 in the input are never chosen and stay -1.
    Loops over classes (not images): O(N) per class, about 1-3 s for
    N = 100k, C = 1000.

    Source: docs/partial_labels.md §6; reference ``coco_simulation.py`` mode
    ``"fix_per_class"`` (same rule, different random stream; see the module
    docstring).

    Args:
        labels: int array [N, C] in {1, 0, -1} (any integer/bool dtype, or
            floats holding these values); normally fully labelled.
        num_per_class: int >= 0, N_.
        seed: int >= 0 or None (None: fresh OS entropy, not reproducible).

    Returns:
        int8 NumPy array [N, C] in {1, 0, -1}.

    Raises:
        ValueError: if ``labels`` is not 2-D or holds other values,
            ``num_per_class`` is not an int >= 0, or ``seed`` is invalid.
    """
    fn = "simulate_fpc"
    y = _check_labels(labels, fn)
    if (not isinstance(num_per_class, numbers.Integral)
            or isinstance(num_per_class, bool) or num_per_class < 0):
        raise ValueError(
            f"{fn}: `num_per_class` must be an int >= 0, got {num_per_class!r}")
    _check_seed(seed, fn)
    rng = np.random.default_rng(seed)
    k = int(num_per_class)
    y_t = np.ascontiguousarray(y.T)                 # [C, N], rows contiguous
    out_t = np.full(y_t.shape, -1, dtype=np.int8)
    for c in range(y_t.shape[0]):
        column = y_t[c]
        for value in (1, 0):
            idx = np.flatnonzero(column == value)
            if idx.size > k:
                idx = rng.choice(idx, size=k, replace=False, shuffle=False)
            out_t[c, idx] = value
    return np.ascontiguousarray(out_t.T)


def simulate_rps(labels, drop_fraction, seed=0):
    """Random-per-sample (RPS) simulation: drop each label with probability p.

    Entry (i, c) becomes -1 iff ``u_ic < p`` with ``u_ic`` ~ U[0, 1) the
    (i*C + c)-th draw of ``np.random.default_rng(seed).random``; so p = 0
    keeps everything and p = 1 drops everything. Input -1 entries stay -1.
    The number dropped among K known entries is Binomial(K, p). Processed
    in row chunks (memory O(chunk), the result does not depend on it).

    Source: docs/partial_labels.md §6; reference ``coco_simulation.py`` mode
    ``"random_per_sample"`` (``np.random.random(S.shape) < param``).

    Args:
        labels: int array [N, C] in {1, 0, -1}.
        drop_fraction: float p in [0, 1].
        seed: int >= 0 or None (None: not reproducible).

    Returns:
        int8 NumPy array [N, C] in {1, 0, -1}.

    Raises:
        ValueError: for invalid labels, p outside [0, 1] or a bad seed.
    """
    fn = "simulate_rps"
    y = _check_labels(labels, fn)
    try:
        p = float(drop_fraction)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:
        raise ValueError(
            f"{fn}: `drop_fraction` must be in [0, 1], got {drop_fraction!r}")
    _check_seed(seed, fn)
    rng = np.random.default_rng(seed)
    out = np.array(y, dtype=np.int8, copy=True)
    n, c = out.shape
    for rows in _row_chunks(n, c):
        u = rng.random((rows.stop - rows.start, c))
        block = out[rows]
        block[u < p] = -1
    return out


def _count_per_class(y, value):
    """#{i : y[i, c] == value} per class, int64 [C] (row chunks)."""
    counts = np.zeros(y.shape[1], dtype=np.int64)
    for rows in _row_chunks(*y.shape):
        hit = (y[rows] == value).view(np.uint8)
        counts += np.add.reduce(hit, axis=0, dtype=np.int32)
    return counts


def _fraction(num, den):
    """num / den elementwise as floats, 0.0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def partial_label_stats(full, partial):
    """Counts and fractions of the labels kept by a simulation.

    With ``full`` the original labels and ``partial`` the simulated ones
    (every entry of ``partial`` must equal ``full`` or be -1), per class and
    overall:

    * ``positives`` / ``negatives`` / ``unknown_in_full``: entries equal to
      1 / 0 / -1 in ``full``;
    * ``kept_positives`` / ``kept_negatives``: entries still 1 / 0 in
      ``partial``; ``unknown``: entries -1 in ``partial``;
    * ``kept_positive_fraction`` = kept_positives / positives,
      ``kept_negative_fraction`` = kept_negatives / negatives (0.0 when the
      denominator is 0), ``unknown_fraction`` = unknown / N per class and
      unknown / (N * C) overall, ``annotated_fraction`` = 1 -
      ``unknown_fraction``.

    Args:
        full: int array [N, C] in {1, 0, -1}.
        partial: int array [N, C] in {1, 0, -1}.

    Returns:
        JSON-serialisable dict: ``{"num_images": N, "num_classes": C,
        "overall": {key: int or float}, "per_class": {key: list of C}}``
        with the keys above (Python ints and floats; fractions in [0, 1]).

    Raises:
        ValueError: if a shape is not 2-D, the shapes differ, a value is not
            in {1, 0, -1}, or ``partial`` changes a label other than to -1.
    """
    fn = "partial_label_stats"
    f = _check_labels(full, fn, "full")
    p = _check_labels(partial, fn, "partial")
    if f.shape != p.shape:
        raise ValueError(
            f"{fn}: shapes differ: full {f.shape} vs partial {p.shape}")
    n, c = f.shape
    for rows in _row_chunks(n, c):
        bad = (p[rows] != f[rows]) & (p[rows] != -1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            i += rows.start
            raise ValueError(
                f"{fn}: partial[{i}, {j}] = {p[i, j]} but full[{i}, {j}] = "
                f"{f[i, j]}; a simulation may only turn labels into -1")
    pos, neg, unk_full = (_count_per_class(f, v) for v in (1, 0, -1))
    kept_pos, kept_neg, unk = (_count_per_class(p, v) for v in (1, 0, -1))

    def block(pos, neg, unk_full, kept_pos, kept_neg, unk, total):
        unknown_fraction = _fraction(unk, total)
        return {
            "positives": pos,
            "negatives": neg,
            "unknown_in_full": unk_full,
            "kept_positives": kept_pos,
            "kept_negatives": kept_neg,
            "unknown": unk,
            "kept_positive_fraction": _fraction(kept_pos, pos),
            "kept_negative_fraction": _fraction(kept_neg, neg),
            "unknown_fraction": unknown_fraction,
            "annotated_fraction": np.where(total > 0, 1.0 - unknown_fraction,
                                           0.0),
        }

    per_class = block(pos, neg, unk_full, kept_pos, kept_neg, unk,
                      np.full(c, n))
    overall = block(*(np.asarray(x.sum()) for x in
                      (pos, neg, unk_full, kept_pos, kept_neg, unk)),
                    np.asarray(n * c))
    return {
        "num_images": int(n),
        "num_classes": int(c),
        "overall": {k: v.item() for k, v in overall.items()},
        "per_class": {k: np.asarray(v).tolist() for k, v in per_class.items()},
    }


_SCHEME_RE = re.compile(r"^\s*([a-z_]+)\s*(?::\s*(\S+)\s*)?$")
_SCHEME_ALIASES = {"fpc": "fpc", "fix_per_class": "fpc",
                   "rps": "rps", "random_per_sample": "rps", "none": "none"}
_SCHEME_HELP = ("expected 'none', 'fpc:<N>' (N an int >= 0 positives and "
                "negatives kept per class) or 'rps:<p>' (0 <= p <= 1, the "
                "fraction of labels dropped); 'fix_per_class' and "
                "'random_per_sample' are accepted aliases")


def parse_scheme(scheme):
    """Parse a simulation scheme string.

    Args:
        scheme: str, ``"none"``, ``"fpc:<N>"`` or ``"rps:<p>"`` (case and
            surrounding spaces ignored; ``fix_per_class`` /
            ``random_per_sample`` are aliases of ``fpc`` / ``rps``).

    Returns:
        ``("none", None)``, ``("fpc", int N)`` or ``("rps", float p)``.

    Raises:
        ValueError: for any other string, with the accepted formats.
    """
    if not isinstance(scheme, str):
        raise ValueError(f"bad partial-label scheme {scheme!r}: {_SCHEME_HELP}")
    match = _SCHEME_RE.match(scheme.lower())
    kind = _SCHEME_ALIASES.get(match.group(1)) if match else None
    param = match.group(2) if match else None
    if kind == "none" and param is None:
        return "none", None
    if kind == "fpc" and param is not None and re.fullmatch(r"\d+", param):
        return "fpc", int(param)
    if kind == "rps" and param is not None:
        try:
            p = float(param)
        except ValueError:
            p = float("nan")
        if 0.0 <= p <= 1.0:
            return "rps", p
    raise ValueError(f"bad partial-label scheme {scheme!r}: {_SCHEME_HELP}")


def simulate(labels, scheme="none", seed=0):
    """Simulate partial labels by a scheme string and report the statistics.

    Args:
        labels: int array [N, C] in {1, 0, -1}, normally fully labelled.
        scheme: str, ``"none"`` (copy), ``"fpc:<N>"`` (:func:`simulate_fpc`)
            or ``"rps:<p>"`` (:func:`simulate_rps`); see :func:`parse_scheme`.
        seed: int >= 0 or None.

    Returns:
        ``(partial, stats)``: int8 array [N, C] in {1, 0, -1}, and the
        :func:`partial_label_stats` dict plus ``"scheme"`` (normalised, e.g.
        ``"fpc:1000"``) and ``"seed"``.

    Raises:
        ValueError: for a bad scheme string, invalid labels or seed.
    """
    kind, param = parse_scheme(scheme)
    full = _check_labels(labels, "simulate")
    if kind == "fpc":
        partial = simulate_fpc(full, param, seed)
        name = f"fpc:{param}"
    elif kind == "rps":
        partial = simulate_rps(full, param, seed)
        name = f"rps:{param:g}"
    else:
        _check_seed(seed, "simulate")
        partial = full.copy()
        name = "none"
    stats = partial_label_stats(full, partial)
    stats["scheme"] = name
    stats["seed"] = None if seed is None else int(seed)
    return partial, stats

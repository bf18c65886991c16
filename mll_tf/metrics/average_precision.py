"""The three reference average-precision (AP) definitions, vectorised in NumPy.

docs/metrics.md §1 lists three AP variants used by the reference code bases. All
functions here take

* ``scores``: float array ``[N, C]`` (N images, C classes), higher = more
  likely present. Every entry must be finite (NaN/inf -> ``ValueError``,
  as in scikit-learn).
* ``labels``: integer array ``[N, C]`` in the mll_tf convention ``1`` present,
  ``0`` absent, ``-1`` unknown (any integer/bool dtype, or floats holding
  exactly these values).

and return per-class AP as **fractions in [0, 1]** (never percent).

========================  ==========  ==============================  ==========
function                  rows used   ties                            no positive
========================  ==========  ==============================  ==========
average_precision_masked  label != -1 grouped (sklearn)               AP = 0
average_precision_asl     all rows    stable descending sort order    AP = 0
average_precision_partial label != -1 stable descending sort order    excluded
========================  ==========  ==============================  ==========
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = [
    "average_precision_masked",
    "mean_average_precision",
    "average_precision_asl",
    "average_precision_partial",
]


# --------------------------------------------------------------------------
# Input checks (shared with top_k.py)
# --------------------------------------------------------------------------

def _check_inputs(scores, labels, fn):
    """Validate and convert ``(scores, labels)``.

    Returns ``(scores, labels)`` with scores a float32/float64 array [N, C]
    (float16 -> float32, integer/bool -> float64; no copy for float32/64) and
    labels an int8 array [N, C] in {1, 0, -1}.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"{fn}: `scores` must be 2-D [N, C], got shape {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(
            f"{fn}: `labels` shape {labels.shape} does not match `scores` shape "
            f"{scores.shape}")
    if scores.dtype.kind == "f":
        if scores.dtype.itemsize < 4:
            scores = scores.astype(np.float32)
        elif scores.dtype.itemsize > 8:
            scores = scores.astype(np.float64)
    elif scores.dtype.kind in "biu":
        scores = scores.astype(np.float64)
    else:
        raise ValueError(f"{fn}: `scores` must be a real numeric array, got dtype {scores.dtype}")

    if labels.size == 0:
        return scores, labels.astype(np.int8)
    if labels.dtype.kind == "b":
        return scores, labels.astype(np.int8)
    if labels.dtype.kind in "iu":
        lo, hi = labels.min(), labels.max()
        if lo < -1 or hi > 1:
            bad = np.unique(labels[(labels < -1) | (labels > 1)])[:5]
            raise ValueError(
                f"{fn}: `labels` must be 1 (present), 0 (absent) or -1 (unknown); "
                f"found {bad.tolist()}")
        return scores, labels.astype(np.int8, copy=False)
    if labels.dtype.kind == "f":
        ok = (labels == -1) | (labels == 0) | (labels == 1)
        if not ok.all():
            bad = np.unique(labels[~ok])[:5]
            raise ValueError(
                f"{fn}: `labels` must be 1 (present), 0 (absent) or -1 (unknown); "
                f"found {bad.tolist()}")
        return scores, labels.astype(np.int8)
    raise ValueError(f"{fn}: `labels` must be an integer array, got dtype {labels.dtype}")


def _check_finite_minmax(smin, smax, fn):
    if not (np.all(np.isfinite(smin)) and np.all(np.isfinite(smax))):
        raise ValueError(f"{fn}: `scores` must be finite (found NaN or inf)")


# --------------------------------------------------------------------------
# (a) sklearn AP on the known entries -- bucket-counting implementation
# --------------------------------------------------------------------------
#
# For one class, with K = known rows (label != -1) and P = positives among them,
# scikit-learn's average_precision_score (ties grouped by score) equals
#
#     AP = 1/|P| * sum_{j in P} TP(>= s_j) / K(>= s_j)
#
# where TP(>= s) / K(>= s) count positives / known rows with score >= s:
# every positive of a tie group gets the precision at the END of its group,
# i.e. sum_groups (R_g - R_{g-1}) * P_g. Instead of sorting each column (the
# slowest step: ~25 ns per entry on the 2-core test machine), entries are
# counted into value buckets b = floor((s - min_c) * B / (max_c - min_c)),
# B ~ N, a monotone map (equal scores share a bucket, a higher bucket means a
# strictly higher score). Per bucket, known rows and positives are counted in
# one packed np.add.at; prefix sums give the counts above each bucket. A
# positive whose bucket holds only known entries with its own score ("pure"
# bucket: always the case for tie groups smaller than a bucket, e.g. rounded
# scores) is then exact. Only the known entries of the "impure" buckets that
# hold a positive are sorted (np.lexsort) to resolve the order inside them.
# Columns are transposed in panels (cache-friendly tiles) and processed in
# blocks with preallocated buffers; panels are spread over worker threads.

_BLOCK_ENTRIES = 1 << 19      # entries per column block (block_cols * N)
_PANEL_COLS = 128             # columns transposed at once from the [N, C] input
_PANEL_ROWS = 512             # rows per transposition tile
_BUCKETS_PER_ROW = 1.0        # value buckets per class, relative to N
_LOW32 = np.int64(0xFFFFFFFF)
# Packed per-entry increment indexed by the label viewed as uint8 (-1 -> 255):
# known count in the low 32 bits, positive count in the high 32 bits.
_INCREMENT = np.zeros(256, dtype=np.int64)
_INCREMENT[0] = 1
_INCREMENT[1] = 1 + (1 << 32)


class _Workspace:
    """Reusable buffers of one worker thread (fresh pages are slow to fault in)."""

    def __init__(self, n, panel, cb, nb, sdt):
        e = n * cb
        self.sT = np.empty((panel, n), dtype=sdt)
        self.yT = np.empty((panel, n), dtype=np.int8)
        self.t = np.empty(e, dtype=sdt)
        self.g = np.empty(e, dtype=np.intp)
        self.v = np.empty(e, dtype=np.int64)
        self.b1 = np.empty(e, dtype=bool)
        self.b2 = np.empty(e, dtype=bool)
        self.cnt = np.empty(cb * nb, dtype=np.int64)
        self.rep = np.empty(cb * nb, dtype=sdt)


def _transpose_into(out, src):
    """out[:, :] = src.T for src [N, w] strided, tile by tile (cache friendly)."""
    n = src.shape[0]
    for r0 in range(0, n, _PANEL_ROWS):
        out[:, r0:r0 + _PANEL_ROWS] = src[r0:r0 + _PANEL_ROWS].T


def _masked_ap_block(ws, s, y, smin, smax):
    """AP (variant a) for one block of columns.

    ``s`` [cb, n] float and ``y`` [cb, n] int8, C-contiguous (one class per
    row), ``smin`` / ``smax`` [cb] the per-class score range; ``ws`` a
    :class:`_Workspace` with large enough buffers. Returns AP [cb] float64.
    """
    cb, n = s.shape
    e = n * cb
    nb_inner = max(int(_BUCKETS_PER_ROW * n), 1)
    nb = nb_inner + 2            # bucket index is in [0, nb_inner] (+1 margin)
    nbins = cb * nb
    rng = smax.astype(np.float64) - smin.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(rng > 0, nb_inner / rng, 0.0)
    if s.dtype == np.float32 and np.any(rng > 0.5 * float(np.finfo(np.float32).max)):
        t = np.empty((cb, n), dtype=np.float64)   # s - smin would overflow float32
    else:
        t = ws.t[:e].reshape(cb, n)
    # bucket b = floor((s - min) * scale): monotone in s, equal s -> equal b.
    # The column offset col * nb is added in floating point when the sum is
    # exact for integers (< 2**24 in float32): rounding then stays monotone
    # and floor(off + x) remains in [off, off + nb_inner + 1] for x in
    # [0, nb_inner (1 + tiny)].
    np.subtract(s, smin.astype(t.dtype)[:, None], out=t)
    t *= scale.astype(t.dtype)[:, None]
    off = np.arange(cb, dtype=np.intp) * nb
    g = ws.g[:e].reshape(cb, n)
    if nbins < 2 ** (np.finfo(t.dtype).nmant + 1):
        t += off.astype(t.dtype)[:, None]
        np.copyto(g, t, casting="unsafe")     # truncation = floor (t >= 0)
    else:
        np.copyto(g, t, casting="unsafe")
        g += off[:, None]                     # global id col * nb + b
    gf = g.ravel()
    sf = s.ravel()
    yf = y.ravel()
    v = ws.v[:e]
    np.take(_INCREMENT, yf.view(np.uint8), out=v, mode="clip")
    cnt = ws.cnt[:nbins]
    cnt.fill(0)
    np.add.at(cnt, gf, v)                     # packed (known, positive) counts

    ap = np.zeros(cb, dtype=np.float64)
    is_pos = ws.b1[:e]
    np.equal(yf, 1, out=is_pos)
    pflat = np.flatnonzero(is_pos)
    if pflat.size == 0:
        return ap
    pcol = pflat // n
    npos = np.bincount(pcol, minlength=cb)
    pg = gf[pflat]
    ps = sf[pflat]

    # Purity of the buckets holding a positive: does every known entry of the
    # bucket have the score of (one of) its positives? rep = NaN elsewhere,
    # and comparisons with NaN are False.
    rep = ws.rep[:nbins]
    rep.fill(np.nan)
    rep[pg] = ps
    rv = ws.t[:e] if ws.t.dtype == s.dtype else np.empty(e, dtype=s.dtype)
    np.take(rep, gf, out=rv)
    neq = ws.b1[:e]
    np.greater(sf, rv, out=neq)
    tmp = ws.b2[:e]
    np.less(sf, rv, out=tmp)
    neq |= tmp
    np.greater_equal(yf, 0, out=tmp)
    neq &= tmp
    bad = np.flatnonzero(neq)
    impure_flag = np.zeros(nbins, dtype=bool)
    impure_flag[gf[bad]] = True
    pure = ~impure_flag[pg]

    c2 = cnt.reshape(cb, nb)
    np.cumsum(c2, axis=1, out=c2)             # inclusive prefix counts
    tot = c2[:, -1]
    k_tot = tot & _LOW32
    p_tot = tot >> 32

    # pure buckets: every entry of the bucket ties with the positive
    pgp = pg[pure]
    colp = pcol[pure]
    prev = cnt[pgp - 1]
    prev[(pgp % nb) == 0] = 0
    k_ge = k_tot[colp] - (prev & _LOW32)      # known with score >= s_j
    p_ge = p_tot[colp] - (prev >> 32)         # positives with score >= s_j
    ap += np.bincount(colp, weights=p_ge / k_ge, minlength=cb)

    if not pure.all():
        # impure buckets holding a positive: sort their known entries
        flag = np.zeros(nbins, dtype=bool)
        flag[pg[~pure]] = True
        sel = ws.b1[:e]
        np.take(flag, gf, out=sel)
        sel &= tmp                            # known entries only
        rsel = np.flatnonzero(sel)
        rg = gf[rsel]
        rs = sf[rsel]
        rpos = yf[rsel] == 1
        order = np.lexsort((rs, rg))           # by bucket, then ascending score
        rg, rs, rpos = rg[order], rs[order], rpos[order]
        m = rg.size
        new_run = np.ones(m, dtype=bool)
        new_run[1:] = (rg[1:] != rg[:-1]) | (rs[1:] != rs[:-1])
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(m), 0))
        bucket_end = np.searchsorted(rg, rg, side="right")
        cpos = np.concatenate(([0], np.cumsum(rpos)))
        sel_p = np.flatnonzero(rpos)
        r0 = run_start[sel_p]
        b1 = bucket_end[sel_p]
        k_in = b1 - r0                         # known with score >= s in bucket
        p_in = cpos[b1] - cpos[r0]             # positives with score >= s
        g_r = rg[sel_p]
        col_r = g_r // nb
        cum_r = cnt[g_r]
        k_ab = k_tot[col_r] - (cum_r & _LOW32)   # known in buckets above
        p_ab = p_tot[col_r] - (cum_r >> 32)
        ap += np.bincount(col_r, weights=(p_ab + p_in) / (k_ab + k_in), minlength=cb)

    has = npos > 0
    ap[has] /= npos[has]
    return ap


def _default_threads():
    try:
        return max(1, min(2, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, min(2, os.cpu_count() or 1))


def average_precision_masked(scores, labels, *, num_threads=None):
    """Per-class AP over the annotated entries (variant (a), LESA / IMCL).

    For each class ``c`` the rows with a known label (``labels[:, c] != -1``)
    are kept and the AP is ``sklearn.metrics.average_precision_score`` on them
    (positive = ``1``), i.e. ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
    score thresholds: **tied scores are grouped** exactly as scikit-learn does.
    A class with no known positive gets AP = 0 (and stays in the mean of
    :func:`mean_average_precision`). Unknown entries never influence the
    result, whatever their score.

    Fully vectorised over classes and images (value-bucket counting with one
    ``np.add.at`` per block of columns; only buckets that mix a positive
    with other distinct scores are sorted). Column blocks run on up to
    ``num_threads`` threads.

    Args:
        scores: float array ``[N, C]`` (float32 or float64 are used as is;
            other numeric dtypes are converted), finite values.
        labels: integer array ``[N, C]`` with values in {1, 0, -1}.
        num_threads: int or None. Worker threads over column blocks
            (default: min(2, available cores)).

    Returns:
        ``np.float64`` array ``[C]`` of AP fractions in [0, 1].

    Raises:
        ValueError: if ``scores`` is not 2-D, if the shapes differ, if
            ``labels`` holds a value outside {1, 0, -1}, or if ``scores``
            holds NaN or inf.

    Source: docs/metrics.md §1 variant (a); LESA ``core/utils.py::compute_AP``,
    IMCL ``measurement.py``.
    """
    fn = "average_precision_masked"
    scores, labels = _check_inputs(scores, labels, fn)
    n, c = scores.shape
    if c == 0:
        return np.zeros(0, dtype=np.float64)
    if n == 0:
        return np.zeros(c, dtype=np.float64)
    panel = min(c, _PANEL_COLS)
    cb = max(1, min(panel, _BLOCK_ENTRIES // n))
    starts = list(range(0, c, panel))
    threads = _default_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ValueError(f"{fn}: `num_threads` must be >= 1, got {num_threads}")
    threads = min(threads, len(starts))
    nb = max(int(_BUCKETS_PER_ROW * n), 1) + 2
    parts = [None] * len(starts)

    def worker(which):
        ws = _Workspace(n, panel, cb, nb, scores.dtype)
        for i in which:
            c0 = starts[i]
            w = min(c, c0 + panel) - c0
            sT = ws.sT[:w]
            yT = ws.yT[:w]
            _transpose_into(sT, scores[:, c0:c0 + w])
            _transpose_into(yT, labels[:, c0:c0 + w])
            smin = sT.min(axis=1)
            smax = sT.max(axis=1)
            _check_finite_minmax(smin, smax, fn)
            parts[i] = np.concatenate([
                _masked_ap_block(ws, sT[j:min(j + cb, w)], yT[j:min(j + cb, w)],
                                 smin[j:j + cb], smax[j:j + cb])
                for j in range(0, w, cb)])

    groups = [range(w, len(starts), threads) for w in range(threads)]
    if threads == 1:
        worker(groups[0])
    else:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            list(ex.map(worker, groups))
    return np.concatenate(parts)


def mean_average_precision(scores, labels):
    """Mean over all C classes of :func:`average_precision_masked` (LESA mAP).

    Args:
        scores: float array ``[N, C]``, finite.
        labels: integer array ``[N, C]`` in {1, 0, -1}.

    Returns:
        Python float in [0, 1]: the mean of the C per-class APs, classes
        without a known positive counted as 0 (0.0 when C == 0).

    Raises:
        ValueError: as :func:`average_precision_masked`.

    Source: docs/metrics.md §1 variant (a); docs/lesa.md §5.
    """
    ap = average_precision_masked(scores, labels)
    return float(ap.mean()) if ap.size else 0.0


def _average_precision_masked_sorted(scores, labels):
    """Reference implementation of variant (a) with one argsort (for tests).

    Same contract as :func:`average_precision_masked`; simpler and slower.
    """
    fn = "average_precision_masked"
    scores, labels = _check_inputs(scores, labels, fn)
    n, c = scores.shape
    if n == 0 or c == 0:
        return np.zeros(c, dtype=np.float64)
    _check_finite_minmax(scores.min(axis=0), scores.max(axis=0), fn)
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    y = np.take_along_axis(labels, order, axis=0)
    pos = (y == 1)
    tp = np.cumsum(pos, axis=0)
    kn = np.cumsum(y >= 0, axis=0)
    # end of each tie group: last row, or next score differs
    end = np.ones_like(pos)
    end[:-1] = s[1:] != s[:-1]
    # index of the group end for every row (reverse running minimum)
    rows = np.arange(n)[:, None]
    e = np.where(end, rows, n)
    e = np.minimum.accumulate(e[::-1], axis=0)[::-1]
    tp_e = np.take_along_axis(tp, e, axis=0)
    kn_e = np.take_along_axis(kn, e, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pos, tp_e / np.maximum(kn_e, 1), 0.0)
    npos = pos.sum(axis=0)
    ap = prec.sum(axis=0)
    return np.where(npos > 0, ap / np.maximum(npos, 1), 0.0)


# --------------------------------------------------------------------------
# (b) and (c): ASL / CSL average precision (ties in sort order)
# --------------------------------------------------------------------------

def _ap_rank_order(scores, pos, valid):
    """AP per column with ties broken by a stable descending sort.

    scores [N, C] float, pos [N, C] bool (positive), valid [N, C] bool (rows
    that take part). Returns (ap [C] float64, npos [C], nneg [C]).
    """
    n, c = scores.shape
    # stable sort of -scores: among equal scores the lower row index ranks first
    order = np.argsort(-scores, axis=0, kind="stable")
    p = np.take_along_axis(pos & valid, order, axis=0)
    v = np.take_along_axis(valid, order, axis=0)
    tp = np.cumsum(p, axis=0)
    rank = np.cumsum(v, axis=0)           # 1-based rank among valid rows
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(p, tp / np.maximum(rank, 1), 0.0)
    npos = p.sum(axis=0)
    nneg = v.sum(axis=0) - npos
    ap = np.where(npos > 0, prec.sum(axis=0) / np.maximum(npos, 1), 0.0)
    return ap, npos, nneg


def average_precision_asl(scores, labels):
    """Per-class AP of ASL / CSL / DOR-ML (variant (b)), as a fraction.

    Over **all** N rows; only ``label == 1`` is positive, unknown (``-1``)
    counts as negative. ``AP_c = sum_{k: y_k = 1} prec@k / #pos`` along a
    **stable descending sort** of the scores: tied scores keep their row
    order (the lower row index is ranked first). This is neither sklearn's
    grouping of ties nor the reference's order: the reference ranks with
    ``argsort()[::-1]`` (NumPy's default, unstable sort, reversed), whose
    order among tied scores is unspecified, so results can differ from the
    reference's when scores tie.
    A class with no positive gets AP = 0. The reference returns percent and
    divides by ``#pos + 1e-8``; here the result is a fraction in [0, 1] and
    the division is exact.

    Args:
        scores: float array ``[N, C]``, finite.
        labels: integer array ``[N, C]`` in {1, 0, -1}.

    Returns:
        ``np.float64`` array ``[C]`` in [0, 1].

    Raises:
        ValueError: on non-2-D input, shape mismatch, labels outside
            {1, 0, -1}, or NaN/inf scores.

    Source: docs/metrics.md §1 variant (b); ASL ``helper_functions.average_precision``.
    """
    fn = "average_precision_asl"
    scores, labels = _check_inputs(scores, labels, fn)
    n, c = scores.shape
    if n == 0 or c == 0:
        return np.zeros(c, dtype=np.float64)
    _check_finite_minmax(scores.min(axis=0), scores.max(axis=0), fn)
    ap, _, _ = _ap_rank_order(scores, labels == 1, np.ones(labels.shape, dtype=bool))
    return ap


def average_precision_partial(scores, labels):
    """Per-class AP on annotated rows (variant (c), CSL ``AP_partial``).

    Variant (b) (:func:`average_precision_asl`, ties in stable descending
    sort order) computed, per class, on the rows with ``label != -1`` only.
    Classes without a known positive or without a known negative are
    excluded: their AP is NaN and ``valid`` is False. The mean over valid
    classes is ``np.nanmean(ap)`` (or ``ap[valid].mean()``).

    Args:
        scores: float array ``[N, C]``, finite.
        labels: integer array ``[N, C]`` in {1, 0, -1}.

    Returns:
        Tuple ``(ap, valid)``: ``ap`` ``np.float64`` ``[C]`` with fractions in
        [0, 1] for valid classes and NaN otherwise; ``valid`` bool ``[C]``.

    Raises:
        ValueError: on non-2-D input, shape mismatch, labels outside
            {1, 0, -1}, or NaN/inf scores.

    Source: docs/metrics.md §1 variant (c); CSL ``helper_functions.AP_partial``.
    """
    fn = "average_precision_partial"
    scores, labels = _check_inputs(scores, labels, fn)
    n, c = scores.shape
    if n == 0 or c == 0:
        return np.full(c, np.nan), np.zeros(c, dtype=bool)
    _check_finite_minmax(scores.min(axis=0), scores.max(axis=0), fn)
    ap, npos, nneg = _ap_rank_order(scores, labels == 1, labels != -1)
    valid = (npos > 0) & (nneg > 0)
    return np.where(valid, ap, np.nan), valid

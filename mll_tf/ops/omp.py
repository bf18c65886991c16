"""Batched greedy sparse coding (OMP) of IMCL, vectorised in TensorFlow.

Port of the selection rule of ``e2e_OMP_asym_sigmoid_Feature_Graph`` in
``colaborative_loss.py`` (hbdat/cvpr20_IMCL; Huynh & Elhamifar, CVPR 2020,
Eq. (6) and Alg. 1; docs/imcl.md §2). The reference runs one
``tf.while_loop`` per image under ``tf.map_fn(parallel_iterations=1)``; here
all images of the batch are coded together with masks, and the at most ``k``
greedy steps are an unrolled Python loop (so the function traces to one static
graph and compiles under XLA).

This module is TensorFlow (not ``keras.ops``): it is a non-differentiable
numerical routine (everything runs under ``tf.stop_gradient``), like the data
and distribution code.
"""

import tensorflow as tf

#: Added to ``max(lambda_label, lambda_feature)`` before dividing the two
#: weights by it (reference ``denominator = max(...) + 0.0001``).
LAMBDA_NORMALIZER_EPS = 1e-4

#: With a bfloat16 screen, the first greedy step is decided in float32 among
#: each image's this many best eligible candidates by the screen's score.
FIRST_STEP_RESCORED = 8


def _is_static_zero(value):
    """True if ``value`` is a Python/NumPy number equal to 0 (not a tensor)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return False
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _safe_divide(num, den):
    """num / den where den > 0, else 0 (den broadcast against num)."""
    positive = den > 0
    return tf.where(positive, num / tf.where(positive, den, tf.ones_like(den)),
                    tf.zeros_like(num))


def _solve_support(atoms, query, valid, ridge):
    """Least-squares coefficients of ``query`` on the valid ``atoms``.

    Solves ``(X X^T + ridge * s * I) p = X q`` per image, where X [k, E] holds
    the valid atoms (invalid rows replaced by zeros, with a unit diagonal so
    that their coefficient is exactly 0) and ``s`` is the mean squared norm of
    the valid atoms (so ``ridge`` is relative and scale-free).

    Args:
        atoms: float32 [B, k, E].
        query: float32 [B, E].
        valid: bool [B, k].
        ridge: float, relative Tikhonov term (>= 0).

    Returns:
        float32 [B, k] coefficients, 0 where not valid.
    """
    validf = tf.cast(valid, atoms.dtype)
    x = atoms * validf[:, :, None]
    gram = tf.matmul(x, x, transpose_b=True)                      # [B, k, k]
    diag = tf.linalg.diag_part(gram)
    count = tf.maximum(tf.reduce_sum(validf, axis=1), 1.0)
    scale = tf.reduce_sum(diag, axis=1) / count                    # [B]
    k = tf.shape(atoms)[1]
    eye = tf.eye(k, batch_shape=[1], dtype=atoms.dtype)
    reg = (ridge * scale[:, None] * validf + (1.0 - validf))       # [B, k]
    system = gram + eye * reg[:, :, None]
    rhs = tf.einsum("bke,be->bk", x, query)[:, :, None]
    coef = tf.linalg.solve(system, rhs)[:, :, 0]
    return coef * validf


def _inner(queries, dictionary):
    """<q_b, d_n> as [B, N] = (D Q^T)^T.

    ``matmul(q, d, transpose_b=True)`` makes oneDNN transpose the whole
    [N, E] dictionary on every call (about 2x slower on CPU for N = 10^4,
    E = 2049); transposing the small [N, B] product instead is cheap.
    """
    return tf.transpose(tf.matmul(dictionary, queries, transpose_b=True))


def _exclusion_mask(query, query_sq, atom_sq, inner, rows_of, dedup_tol, candidates, slack=1e-3):
    """bool [B, n], True where ``||a_j - q_i|| < dedup_tol`` (near-duplicate).

    The atoms are the whole dictionary (``atom_sq`` [N]) or each image's
    candidates (``atom_sq`` [B, M]); ``inner`` [B, n] holds ``<q_i, a_j>``
    and ``rows_of(idx [B, r]) -> [B, r, E]`` returns the atoms' float32 rows.
    The distance from the matmul (``|q|^2 + |a|^2 - 2 <q, a>``) cancels
    catastrophically for near-identical float32 vectors of large norm, so it is
    only used to find candidates: the ``candidates`` atoms closest to each
    query are re-checked with the exact ``sum((a - q)^2)``. Atoms whose
    approximate squared distance is below ``dedup_tol^2 + 1e-3 * (|q|^2 +
    |a|^2)`` (``slack`` instead of 1e-3 when the inner products are rounded
    more than float32's) but which are not among those re-checked are
    excluded conservatively (this needs more than ``candidates``
    near-identical atoms for one image).
    """
    tol2 = tf.cast(dedup_tol, query.dtype) ** 2
    scale = query_sq[:, None] + atom_sq
    approx = scale - 2.0 * inner                                   # [B, n]
    suspicious = approx < tol2 + slack * scale
    _, top = tf.math.top_k(-approx, k=candidates)                  # [B, r]
    exact = tf.reduce_sum(tf.square(rows_of(top) - query[:, None, :]), axis=-1)
    hit = tf.one_hot(top, tf.shape(inner)[1], on_value=True, off_value=False)   # [B, r, n]
    checked = tf.reduce_any(hit, axis=1)
    confirmed = tf.reduce_any(hit & (exact < tol2)[:, :, None], axis=1)
    return confirmed | (suspicious & ~checked)


def _scores(inner_l, inner_f, ny, nf, eligible, lam_l, lam_f, balance):
    """The greedy score of every atom (see :func:`batched_omp`), [B, N]."""
    score_l = _safe_divide(tf.square(inner_l), ny)
    score_f = _safe_divide(tf.square(inner_f), nf)
    if balance:
        zero = tf.zeros_like(score_l)
        max_l = tf.reduce_max(tf.where(eligible, score_l, zero), axis=1, keepdims=True)
        max_f = tf.reduce_max(tf.where(eligible, score_f, zero), axis=1, keepdims=True)
        score_l = _safe_divide(score_l, max_l)
        score_f = _safe_divide(score_f, max_f)
    sign = (tf.sign(inner_l) * tf.sign(lam_l)
            + tf.sign(inner_f) * tf.sign(lam_f))
    return (lam_l * score_l + lam_f * score_f) * sign


def _greedy(y, f, inner_l_fn, inner_f_fn, atoms_fn, ny, nf, eligible, n, k,
            inner_l0, inner_f0, weights, first_pool=None):
    """The ``k`` greedy steps of :func:`batched_omp` over ``n`` atoms per image.

    ``inner_*_fn(residual [B, .]) -> [B, n]`` and ``atoms_fn(indices [B, k])
    -> (label atoms [B, k, C], feature atoms [B, k, E])`` address either the
    whole dictionary or each image's candidates; ``ny``/``nf`` broadcast to
    [B, n]. ``first_pool`` (bool [B, n] or None): the atoms the first step may
    choose from. Returns (indices [B, k] into the n atoms, -1 unused;
    coef_label; coef_feature).
    """
    lam_l, lam_f, threshold, balance, ridge, skip_label, skip_feature = weights
    neg_inf = tf.constant(float("-inf"), tf.float32)
    batch = tf.shape(y)[0]
    res_l, res_f = y, f
    inner_l, inner_f = inner_l0, inner_f0
    selected = tf.zeros([batch, n], tf.bool)
    active = tf.ones([batch], tf.bool)
    slots = []
    coef_l = coef_f = indices = None
    for step in range(k):
        if step > 0 and not skip_label:
            inner_l = inner_l_fn(res_l)                            # [B, n]
        if step > 0 and not skip_feature:
            inner_f = inner_f_fn(res_f)
        score = _scores(inner_l, inner_f, ny, nf, eligible, lam_l, lam_f, balance)
        score = tf.where(eligible & ~selected, score, neg_inf)
        if step == 0 and first_pool is not None:
            score = tf.where(first_pool, score, neg_inf)
        best = tf.argmax(score, axis=1, output_type=tf.int32)      # [B]
        best_score = tf.reduce_max(score, axis=1)
        active = active & (best_score >= threshold)
        slots.append(tf.where(active, best, -tf.ones_like(best)))
        selected = selected | ((tf.one_hot(best, n) > 0) & active[:, None])
        indices = tf.stack(slots + [-tf.ones_like(best)] * (k - step - 1),
                           axis=1)                                  # [B, k]
        valid = indices >= 0
        atoms_l, atoms_f = atoms_fn(tf.maximum(indices, 0))        # [B, k, C], [B, k, E]
        coef_l = _solve_support(atoms_l, y, valid, ridge)
        coef_f = _solve_support(atoms_f, f, valid, ridge)
        if step + 1 < k:
            res_l = y - tf.einsum("bk,bkc->bc", coef_l, atoms_l)
            res_f = f - tf.einsum("bk,bke->be", coef_f, atoms_f)
    return indices, coef_l, coef_f


def _candidate_search(y, f, dy, df, ny, nf, inner_l0, inner_f0, lam_l, lam_f, threshold, dedup_tol,
                      m, checks, rescored, k, balance, ridge, skip_label, skip_feature, screened):
    """The pre-filter's search: each image's M best atoms by the first score, then OMP over them.

    ``inner_l0``/``inner_f0`` [B, N] are the screen's first-step inner products
    (float32, or bfloat16 read back as float32 when ``screened``). ``ny``/``nf``
    are [N]. Near-duplicates of the image among its candidates are found by
    :func:`_exclusion_mask`, with the ``checks`` closest candidates re-checked
    by the exact distance (with a bfloat16 screen its approximate distances
    get the screen's rounding as extra margin). With a bfloat16 screen the
    first greedy step is decided in float32 among the image's ``rescored``
    best eligible candidates by the screen's score: their inner products are
    recomputed exactly and the step's argmax is taken over them only (the
    exact winner is missed only if ``rescored`` candidates tie with it within
    the screen's rounding). Later steps compute every candidate's inner
    products in float32 from the candidates' rows, gathered once
    ([B, M, C + E]); with ``k = 1`` there are no later steps and only the
    rows a duplicate check, the re-scoring or the chosen atom needs are
    gathered. Returns ``(indices into the dictionary [B, k], coef_label,
    coef_feature)`` as :func:`_greedy`.
    """
    weights = (lam_l, lam_f, threshold, balance, ridge, skip_label, skip_feature)
    everything = tf.ones_like(inner_l0, tf.bool)
    score0 = _scores(inner_l0, inner_f0, ny[None, :], nf[None, :], everything, lam_l, lam_f, balance)
    _, cand = tf.math.top_k(score0, k=m)                           # [B, M]
    cy = cf = None
    if k > 1:   # steps 2..k score every candidate: gather their rows once
        cy, cf = tf.gather(dy, cand), tf.gather(df, cand)          # [B, M, C], [B, M, E]

    def rows_of(table, block):
        """sel [B, r] (positions among the candidates) -> their rows: from the block, or (k = 1) the dictionary."""
        if block is not None:
            return lambda sel: tf.gather(block, sel, batch_dims=1)
        return lambda sel: tf.gather(table, tf.gather(cand, sel, batch_dims=1))

    rows_l, rows_f = rows_of(dy, cy), rows_of(df, cf)
    c_inner_l0 = tf.gather(inner_l0, cand, batch_dims=1)
    c_inner_f0 = tf.gather(inner_f0, cand, batch_dims=1)
    c_ny, c_nf = tf.gather(ny, cand), tf.gather(nf, cand)
    # near-duplicates of the image among its candidates
    # bfloat16 screen: |error of <q, a>| <= 2^-8 |q| |a| <= 2^-9 scale, so the distance's error <= 2^-8 scale
    slack = 1e-3 + (2.0 ** -8 if screened else 0.0)
    eligible = ~_exclusion_mask(f, tf.reduce_sum(tf.square(f), axis=1), c_nf, c_inner_f0,
                                rows_f, dedup_tol, checks, slack)
    pool = None
    if screened:   # the first step in float32 over the `rescored` best eligible candidates
        neg_inf = tf.constant(float("-inf"), tf.float32)
        screen_score = _scores(c_inner_l0, c_inner_f0, c_ny, c_nf, eligible, lam_l, lam_f, balance)
        _, best = tf.math.top_k(tf.where(eligible, screen_score, neg_inf), k=rescored)   # [B, R]
        exact_l = tf.einsum("brc,bc->br", rows_l(best), y)
        exact_f = tf.einsum("bre,be->br", rows_f(best), f)
        hit = tf.one_hot(best, tf.shape(cand)[1], dtype=tf.float32)             # [B, R, M]
        pool = tf.reduce_any(hit > 0, axis=1)
        c_inner_l0 = tf.where(pool, tf.einsum("br,brm->bm", exact_l, hit), c_inner_l0)
        c_inner_f0 = tf.where(pool, tf.einsum("br,brm->bm", exact_f, hit), c_inner_f0)
    indices, coef_l, coef_f = _greedy(
        y, f, lambda r: tf.linalg.matvec(cy, r), lambda r: tf.linalg.matvec(cf, r),   # steps 2..k only
        lambda i: (rows_l(i), rows_f(i)),
        c_ny, c_nf, eligible, m, k, c_inner_l0, c_inner_f0, weights, first_pool=pool)
    indices = tf.where(indices >= 0, tf.gather(cand, tf.maximum(indices, 0), batch_dims=1),
                       -tf.ones_like(indices))
    return indices, coef_l, coef_f


def batched_omp(query_labels, query_features, dict_labels, dict_features, k,
                lambda_label, lambda_feature, threshold, balance=False,
                dedup_tol=1e-3, normalize_lambdas=True, ridge=1e-6,
                dict_label_sq_norms=None, dict_feature_sq_norms=None,
                dedup_candidates=8, prefilter=0, screen_dtype="float32", dict_screen=None):
    """Greedy joint sparse coding of IMCL (docs/imcl.md §2), batched.

    For each image i (row of the queries) the atoms are the dictionary entries
    j, each a pair (label vector Y_j, feature vector F_j). Entries with
    ``||F_j - f_i|| < dedup_tol`` (the image itself when it is in the
    dictionary) are excluded. Starting from the residuals ``r_L = y_i``,
    ``r_F = f_i``, each of the ``k`` steps computes, for every eligible atom::

        a_j = <Y_j, r_L>,  b_j = <F_j, r_F>
        s_L = a_j^2 / ||Y_j||^2,  s_F = b_j^2 / ||F_j||^2
        (balance: s_L /= max_j s_L,  s_F /= max_j s_F over eligible atoms)
        score_j = (l_L s_L + l_F s_F) * (sign(a_j) sign(l_L) + sign(b_j) sign(l_F))

    and takes the argmax over the eligible atoms not yet selected. If that
    score is ``>= threshold`` the atom joins the support A, the coefficients
    are refitted by least squares on A separately for labels and features::

        P_L = y Y_A^T (Y_A Y_A^T)^-1,   P_F = f F_A^T (F_A F_A^T)^-1
        r_L = y - P_L Y_A,              r_F = f - P_F F_A

    otherwise the image stops (its remaining slots stay unused; the reference
    re-evaluates the same residual and fails again, which is equivalent).

    Differences from the reference (the first and the last change no result
    on well-posed problems; the ridge can):

    * the argmax is over atoms not yet selected; the reference takes it over
      all atoms and skips the step when the winner is already in A. After a
      least-squares refit the residuals are orthogonal to the selected atoms,
      so their score is 0 up to round-off and both rules pick the same atom
      unless every remaining score is at round-off level.
    * the normal equations get a relative ridge ``ridge * mean(diag)`` (the
      reference inverts ``Y_A Y_A^T`` exactly and returns inf/NaN when it is
      singular, e.g. two dictionary entries with identical predictions).
      The ridge biases the coefficients: negligibly on well-conditioned
      supports, but on ill-conditioned ones the relative change is roughly
      ``ridge`` times the condition number of the Gram matrix, so the
      coefficients (and the residuals) can differ noticeably from the
      reference's;
    * a zero-norm atom scores 0 for that term (the reference divides by 0),
      and ``balance`` divides by 1 when the maximum is 0.

    With ``normalize_lambdas`` (the reference), both weights are first divided
    by ``max(lambda_label, lambda_feature) + 1e-4``; this matters for the
    comparison with ``threshold``. Passing a Python ``0`` as a lambda skips
    that term's inner products after the first step (its sign factor and
    score are 0, as in the reference).

    Cost: ``k`` matmuls [B, C] x [C, N] and [B, E] x [E, N] plus O(B k^3)
    (with ``prefilter``: one such pair, a top-M over [B, N], then for
    ``k > 1`` a gather of the candidates' rows [B, M, C + E] and ``k - 1``
    batched matrix-vector products over them).

    Args:
        query_labels: float [B, C], the clamped predictions y_i of the batch
            (IMCL: ``clamp(asym_sigmoid(logits))``, no G).
        query_features: float [B, E], the features f_i (IMCL: ``[f Theta_1, 1]``).
        dict_labels: float [N, C], the dictionary's clamped propagated
            predictions Y_j (IMCL: ``clamp(asym_sigmoid(F_dict Theta) G)``).
        dict_features: float [N, E], the dictionary features F_j.
        k: int >= 1, the maximum number of atoms per image (static).
        lambda_label: float or scalar tensor, l_L (>= 0 in IMCL).
        lambda_feature: float or scalar tensor, l_F (>= 0 in IMCL).
        threshold: float or scalar tensor, the minimum accepted score
            (``thresold_coeff``: 1e-3 OpenImages, 1e-20 COCO, 1e-6 CUB).
        balance: bool, divide each score term by its maximum (``is_balance``).
        dedup_tol: float, feature distance below which an entry is excluded.
        normalize_lambdas: bool, the reference weight normalisation (above).
        ridge: float >= 0, relative ridge of the least-squares solves.
        dict_label_sq_norms: optional float [N], precomputed ``||Y_j||^2``.
        dict_feature_sq_norms: optional float [N], precomputed ``||F_j||^2``.
        dedup_candidates: int, entries per image re-checked with the exact
            distance (see the near-duplicate note above; capped at N).
        prefilter: int M >= 0. 0: exact OMP over the whole dictionary. M > 0:
            candidate pre-filter: the first step's scores (above) are
            computed for all N atoms, each image takes the M atoms with the
            highest score as its own candidates, drops its near-duplicates
            among them (as above, ``dedup_candidates`` of them re-checked
            exactly), and the greedy steps and
            least-squares refits run over its candidates only, so steps
            2..k cost B M (C + E) (batched matrix-vector products over the
            gathered candidates) instead of B N (C + E). The first atom is
            the exact one (unless a near-duplicate pushed it out of the M);
            later atoms are exact whenever they are among the image's
            candidates (the support recall against exact OMP is measured by
            ``benchmarks/bench_imcl.py``). With ``balance`` the screen's
            maxima are over all N atoms and the greedy steps' over the
            candidates. With a static dictionary size ``M >= N``
            exact OMP runs (no screening).
        screen_dtype: ``"float32"`` or ``"bfloat16"``; with ``prefilter``,
            the dtype of the first step's [B, N] inner products that choose
            the M candidates (and the near-duplicate candidates). bfloat16
            runs those two matmuls at the CPU's BF16 rate (AVX512-BF16/AMX;
            about 2x float32 here) and rounds the scores to ~3 significant
            digits, which can swap candidates near the M-th score. The first
            greedy step is then decided among the image's
            :data:`FIRST_STEP_RESCORED` best eligible candidates by the
            screen, re-scored in float32 (exact unless that many candidates
            tie with the winner within the rounding; the other candidates'
            first scores stay rounded: only ``balance``'s maxima use them), the
            near-duplicate rule's approximate distances get the rounding
            (2^-8 of ``|q|^2 + |a|^2``) as extra margin, and steps 2..k, the
            exact duplicate check and the least-squares refits are float32.
        dict_screen: optional ``(dict_labels, dict_features)`` already cast
            to ``screen_dtype`` (a cached dictionary casts them once).

    Returns:
        Tuple ``(indices, coef_label, coef_feature, num_selected)``:

        * indices: int32 [B, k], dictionary rows of the support in selection
          order, ``-1`` for unused slots (always a suffix);
        * coef_label: float32 [B, k], P_L on the final support (0 if unused);
        * coef_feature: float32 [B, k], P_F on the final support (0 if unused);
        * num_selected: int32 [B], the support size in [0, k].

    Raises:
        ValueError: if ``k < 1`` or the static shapes disagree.
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"batched_omp: k must be >= 1, got {k}")
    prefilter = int(prefilter)
    if prefilter < 0:
        raise ValueError(f"batched_omp: prefilter must be >= 0, got {prefilter}")
    if screen_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"batched_omp: screen_dtype must be float32 or bfloat16, got {screen_dtype!r}")

    y = tf.stop_gradient(tf.cast(query_labels, tf.float32))
    f = tf.stop_gradient(tf.cast(query_features, tf.float32))
    dy = tf.stop_gradient(tf.cast(dict_labels, tf.float32))
    df = tf.stop_gradient(tf.cast(dict_features, tf.float32))
    if y.shape.rank != 2 or f.shape.rank != 2 or dy.shape.rank != 2 \
            or df.shape.rank != 2:
        raise ValueError("batched_omp: all inputs must be 2-D, got shapes "
                         f"{y.shape}, {f.shape}, {dy.shape}, {df.shape}")
    for a, b, what in ((y.shape[1], dy.shape[1], "label dimension C"),
                       (f.shape[1], df.shape[1], "feature dimension E"),
                       (y.shape[0], f.shape[0], "batch size B"),
                       (dy.shape[0], df.shape[0], "dictionary size N")):
        if a is not None and b is not None and a != b:
            raise ValueError(f"batched_omp: {what} differs: {a} vs {b}")

    if prefilter and dy.shape[0] is not None and prefilter >= int(dy.shape[0]):
        prefilter = 0   # the candidates would be the whole dictionary: exact OMP, without the screening
    screen = prefilter > 0 and screen_dtype != "float32"
    skip_label = _is_static_zero(lambda_label)
    skip_feature = _is_static_zero(lambda_feature)
    lam_l = tf.cast(lambda_label, tf.float32)
    lam_f = tf.cast(lambda_feature, tf.float32)
    if normalize_lambdas:
        den = tf.maximum(lam_l, lam_f) + LAMBDA_NORMALIZER_EPS
        lam_l, lam_f = lam_l / den, lam_f / den
    threshold = tf.cast(threshold, tf.float32)

    if dict_label_sq_norms is None:
        dict_label_sq_norms = tf.reduce_sum(tf.square(dy), axis=1)
    if dict_feature_sq_norms is None:
        dict_feature_sq_norms = tf.reduce_sum(tf.square(df), axis=1)
    ny = tf.stop_gradient(tf.cast(dict_label_sq_norms, tf.float32))[None, :]
    nf = tf.stop_gradient(tf.cast(dict_feature_sq_norms, tf.float32))[None, :]

    n_static = dy.shape[0]
    n = tf.shape(dy)[0]
    if n_static is not None:
        candidates = min(int(dedup_candidates), int(n_static))
    else:
        candidates = int(dedup_candidates)

    if screen:   # the [B, N] inner products in bfloat16, read back as float32
        sy, sf = dict_screen if dict_screen is not None else (tf.cast(dy, screen_dtype),
                                                              tf.cast(df, screen_dtype))
        inner_f0 = tf.cast(_inner(tf.cast(f, screen_dtype), tf.stop_gradient(sf)), tf.float32)
        inner_l0 = tf.cast(_inner(tf.cast(y, screen_dtype), tf.stop_gradient(sy)), tf.float32)
    else:
        inner_f0 = _inner(f, df)                                   # [B, N]
        inner_l0 = _inner(y, dy)                                   # [B, N]
    weights = (lam_l, lam_f, threshold, balance, ridge, skip_label, skip_feature)

    if prefilter == 0:
        eligible = ~_exclusion_mask(f, tf.reduce_sum(tf.square(f), axis=1), nf[0], inner_f0,
                                    lambda top: tf.gather(df, top), dedup_tol, candidates)
        indices, coef_l, coef_f = _greedy(
            y, f, lambda r: _inner(r, dy), lambda r: _inner(r, df),
            lambda i: (tf.gather(dy, i), tf.gather(df, i)),
            ny, nf, eligible, n, k, inner_l0, inner_f0, weights)
    else:
        static = (k, balance, ridge, skip_label, skip_feature, screen)
        args = (y, f, dy, df, ny[0], nf[0], inner_l0, inner_f0, lam_l, lam_f, threshold,
                tf.cast(dedup_tol, tf.float32))
        m = prefilter if n_static is not None else tf.minimum(prefilter, n)
        checks = min(int(dedup_candidates), prefilter)
        rescored = min(FIRST_STEP_RESCORED, prefilter)
        if n_static is None:
            checks, rescored = tf.minimum(checks, m), tf.minimum(rescored, m)
        indices, coef_l, coef_f = _candidate_search(*args, m, checks, rescored, *static)
    num_selected = tf.reduce_sum(tf.cast(indices >= 0, tf.int32), axis=1)
    return (tf.stop_gradient(indices), tf.stop_gradient(coef_l),
            tf.stop_gradient(coef_f), tf.stop_gradient(num_selected))

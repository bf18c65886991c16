"""ZSL / GZSL / seen reports: mAP and micro top-K P/R/F1 in one place.

Protocol (docs/metrics.md §1, §2, §5): AP per class over known labels
(variant (a), a class without a positive scores 0 and stays in the mean);
P/R/F1@K micro over all images. GZSL columns are [unseen, seen].
"""

import numpy as np

from mll_tf.metrics.average_precision import average_precision_masked
from mll_tf.metrics.top_k import top_k_precision_recall_f1


def multilabel_report(scores, labels, ks=(3, 5)):
    """mAP and P/R/F1@K of one score matrix.

    Args:
        scores: float ``[N, C]``.
        labels: int ``[N, C]`` in {1, 0, -1}.
        ks: iterable of int K.

    Returns:
        (summary, ap): summary dict with ``mAP`` and ``P@K``/``R@K``/``F1@K``
        (fractions in [0, 1]) and ``num_images``/``num_labels``; ``ap`` is the
        float64 ``[C]`` per-class AP.
    """
    scores = np.asarray(scores, np.float32)
    labels = np.asarray(labels)
    ap = average_precision_masked(scores, labels)
    out = {"mAP": float(np.mean(ap)) if ap.size else float("nan"),
           "num_images": int(scores.shape[0]), "num_labels": int(scores.shape[1])}
    for k in ks:
        if k > scores.shape[1]:
            continue
        p, r, f = top_k_precision_recall_f1(scores, labels, k)
        out.update({f"P@{k}": float(p), f"R@{k}": float(r), f"F1@{k}": float(f)})
    return out, ap


def zsl_gzsl_report(gzsl_scores, gzsl_labels, num_unseen, ks=(3, 5)):
    """Reports for ZSL (unseen columns), GZSL (all) and seen-only columns.

    Args:
        gzsl_scores: float ``[N, U + S]``, unseen columns first.
        gzsl_labels: int ``[N, U + S]`` in {1, 0, -1}, same order.
        num_unseen: int U.

    Returns:
        (summary, ap): ``summary`` = {"zsl": {...}, "gzsl": {...}, "seen": {...}};
        ``ap`` = float64 ``[U + S]`` per-class AP (identical for an unseen class
        in ZSL and GZSL, since AP is per class).
    """
    u = int(num_unseen)
    zsl, _ = multilabel_report(gzsl_scores[:, :u], gzsl_labels[:, :u], ks)
    gzsl, ap = multilabel_report(gzsl_scores, gzsl_labels, ks)
    seen, _ = multilabel_report(gzsl_scores[:, u:], gzsl_labels[:, u:], ks)
    return {"zsl": zsl, "gzsl": gzsl, "seen": seen}, ap


def format_table(summary, ks=(3, 5), title=None):
    """Plain-text table of a ``zsl_gzsl_report`` summary (fractions in [0, 1], 4 decimals)."""
    cols = ["mAP"] + [f"{m}@{k}" for k in ks for m in ("P", "R", "F1")]
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'setting':<8}{'labels':>7}" + "".join(f"{c:>8}" for c in cols))
    for name, row in summary.items():
        vals = "".join(f"{row[c]:8.4f}" if c in row else f"{'-':>8}" for c in cols)
        lines.append(f"{name:<8}{row['num_labels']:>7}" + vals)
    return "\n".join(lines)


def partial_label_report(logits, labels, threshold=0.5, groups=None):
    """The partial-label evaluation of CSL / ASL / DOR-ML on one score matrix.

    Args:
        logits: float ``[N, C]`` classifier logits (probabilities are their
            sigmoid).
        labels: int ``[N, C]`` in {1, 0, -1}.
        threshold: float in [0, 1] or float ``[C]``, probability threshold of
            the CP/CR/CF1/OP/OR/OF1 metrics.
        groups: optional dict attribute -> list of column indices of mutually
            exclusive classes (attribute tables); adds ``acc/<attribute>`` and
            ``acc/mean``.

    Returns:
        (summary, ap_partial): ``summary`` holds, as fractions in [0, 1],
        ``mAP`` (variant (b) over all entries, unknown counted as negative, as
        CSL's ``mAP``), ``mAP_partial`` (variant (c): unknown entries ignored,
        classes without a known positive or negative dropped — their number
        is ``num_classes_dropped``), ``mAP_partial_weighted`` (weighted by
        known positives), ``CP CR CF1 OP OR OF1`` at ``threshold`` (unknown
        entries ignored) and ``num_images`` / ``num_labels``;
        ``ap_partial`` is float64 ``[C]`` (NaN for dropped classes).

    Source: docs/metrics.md §1 (b) and (c); CSL ``helper_functions.mAP``,
    ``AP_partial``; ``validate.py``.
    """
    from mll_tf.metrics.average_precision import average_precision_asl, average_precision_partial
    from mll_tf.metrics.threshold import attribute_accuracy, threshold_metrics

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    probs = 1.0 / (1.0 + np.exp(-logits))
    ap_all = average_precision_asl(logits, labels)
    ap_part, valid = average_precision_partial(logits, labels)
    npos = (labels == 1).sum(0)
    out = {
        "mAP": float(ap_all.mean()) if ap_all.size else float("nan"),
        "mAP_partial": float(ap_part[valid].mean()) if valid.any() else float("nan"),
        "mAP_partial_weighted": (float((ap_part[valid] * npos[valid]).sum() / npos[valid].sum())
                                 if valid.any() else float("nan")),
        "num_classes_dropped": int((~valid).sum()),
        "num_images": int(labels.shape[0]), "num_labels": int(labels.shape[1]),
    }
    out.update({k: float(v) for k, v in threshold_metrics(probs, labels, threshold=threshold).items()})
    if groups:
        acc = attribute_accuracy(probs, labels, groups)
        out.update({f"acc/{a}": float(v) for a, v in acc.items()})
        vals = [v for v in acc.values() if np.isfinite(v)]
        out["acc/mean"] = float(np.mean(vals)) if vals else float("nan")
    return out, ap_part


def format_partial_table(results, title=None):
    """Plain-text table of several :func:`partial_label_report` summaries (fractions in [0, 1]).

    Args:
        results: dict row name -> summary.
    """
    cols = ["mAP", "mAP_partial", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    extra = sorted({k for r in results.values() for k in r if k.startswith("acc/")})
    cols += extra
    lines = [title] if title else []
    lines.append(f"{'':<12}" + "".join(f"{c.replace('acc/', 'acc ')[:11]:>12}" for c in cols))
    for name, row in results.items():
        lines.append(f"{name:<12}" + "".join(
            f"{row[c]:12.4f}" if c in row and np.isfinite(row[c]) else f"{'-':>12}" for c in cols))
    return "\n".join(lines)

"""Benchmark the vectorised metrics against a per-class scikit-learn loop.

Usage:
    python benchmarks/bench_metrics.py --num-images 100000 --num-labels 1006 --seed 0

Scores are float32 in [0, 1] rounded to ``--decimals`` decimals (ties), labels
are 1 / 0 / -1 with rates ``--pos-rate`` / rest / ``--unknown-rate``. The
baseline is ``sklearn.metrics.average_precision_score`` on the known rows of
each class (0 for a class without a known positive), run in the same process.
Prints wall and process-CPU timings (CPU time is robust when other processes
share the cores), the speed-ups and the max |AP difference|; no assertions.
The top-k baseline is a full stable argsort of every row (same tie rule).
"""

import argparse
import os
import sys
import time

import numpy as np
from sklearn.metrics import average_precision_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mll_tf.metrics import (  # noqa: E402
    average_precision_masked,
    top_k_precision_recall_f1,
)


def sklearn_loop(scores, labels):
    """Reference: per-class scikit-learn AP on the known rows."""
    ap = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        known = labels[:, c] != -1
        y = labels[known, c] == 1
        if y.any():
            ap[c] = average_precision_score(y, scores[known, c])
    return ap


def top_k_argsort(scores, labels, k, rows=2048):
    """Baseline for top-k: full stable argsort of every row (same tie rule)."""
    n = scores.shape[0]
    tp = 0
    for r0 in range(0, n, rows):
        top = np.argsort(-scores[r0:r0 + rows], axis=1, kind="stable")[:, :k]
        tp += int((np.take_along_axis(labels[r0:r0 + rows], top, axis=1) == 1).sum())
    p = tp / (n * k)
    r = tp / max(int((labels == 1).sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def timed(fn, *args, repeat=1, **kw):
    """Best wall time and best process CPU time (all threads) over `repeat` runs."""
    best, best_cpu, out = np.inf, np.inf, None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-images", type=int, default=100000)
    ap.add_argument("--num-labels", type=int, default=1006)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decimals", type=int, default=3,
                    help="round scores to this many decimals (ties); <0: no rounding")
    ap.add_argument("--pos-rate", type=float, default=0.02)
    ap.add_argument("--unknown-rate", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=3,
                    help="repeats of the fast functions (best time)")
    ap.add_argument("--sklearn-labels", type=int, default=0,
                    help="time the sklearn loop on this many classes only and extrapolate "
                         "(0: all classes)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    n, c = args.num_images, args.num_labels
    scores = rng.random((n, c), dtype=np.float32)
    if args.decimals >= 0:
        scores = np.round(scores, args.decimals).astype(np.float32)
    u = rng.random((n, c), dtype=np.float32)
    labels = np.zeros((n, c), dtype=np.int8)
    labels[u < args.pos_rate] = 1
    labels[u > 1.0 - args.unknown_rate] = -1
    print(f"scores {scores.shape} {scores.dtype}, decimals={args.decimals}, "
          f"distinct values per class ~{len(np.unique(scores[:, 0]))}, "
          f"pos-rate={args.pos_rate}, unknown-rate={args.unknown_rate}, threads: "
          f"{len(os.sched_getaffinity(0))} cores")

    t_fast, c_fast, ap_fast = timed(average_precision_masked, scores, labels, repeat=args.repeat)
    t_fast1, c_fast1, ap_fast1 = timed(average_precision_masked, scores, labels,
                                       repeat=args.repeat, num_threads=1)
    m = args.sklearn_labels if 0 < args.sklearn_labels < c else c
    t_sk, c_sk, ap_sk = timed(sklearn_loop, scores[:, :m], labels[:, :m])
    t_sk, c_sk = t_sk * c / m, c_sk * c / m
    diff = float(np.abs(ap_fast[:m] - ap_sk).max())
    diff1 = float(np.abs(ap_fast1[:m] - ap_sk).max())
    extra = "" if m == c else f"   (timed on {m} classes, extrapolated to {c})"
    print(f"{'':42s} {'wall s':>8s} {'cpu s':>8s}")
    print(f"{'average_precision_masked (default threads)':42s} {t_fast:8.3f} {c_fast:8.3f}")
    print(f"{'average_precision_masked (1 thread)':42s} {t_fast1:8.3f} {c_fast1:8.3f}")
    print(f"{'sklearn per-class loop':42s} {t_sk:8.3f} {c_sk:8.3f}{extra}")
    print(f"speed-up vs sklearn, wall: {t_sk / t_fast:6.1f}x (1 thread {t_sk / t_fast1:6.1f}x); "
          f"cpu: {c_sk / c_fast:6.1f}x (1 thread {c_sk / c_fast1:6.1f}x)")
    print(f"max |AP diff| vs sklearn: {max(diff, diff1):.3e}   mAP = {ap_fast.mean():.6f}")
    print(f"load average (other processes share the cores): {os.getloadavg()}")

    for k in (3, 5):
        t_k, c_k, prf = timed(top_k_precision_recall_f1, scores, labels, k, repeat=args.repeat)
        t_l, c_l, prf_l = timed(top_k_argsort, scores, labels, k)
        d = max(abs(a - b) for a, b in zip(prf, prf_l))
        print(f"top_k k={k}: {t_k:6.3f} s wall {c_k:6.3f} s cpu  P={prf[0]:.6f} R={prf[1]:.6f} "
              f"F1={prf[2]:.6f} | stable-argsort baseline {t_l:6.3f} s wall {c_l:6.3f} s cpu, "
              f"speed-up {t_l / t_k:4.1f}x wall {c_l / c_k:4.1f}x cpu, max diff {d:.1e}")

if __name__ == "__main__":
    main()

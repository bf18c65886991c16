"""Run-directory bookkeeping shared by every trainer (LESA, partial-label, fine-tune, IMCL).

A run directory holds ``history.csv`` (one row per validation round),
``final_metrics.json``, ``lr_schedule.json`` (adaptive learning-rate state),
``partial_labels.json`` (the simulated-label statistics) and ``tb/``.
"""

import csv
import json
import os

import numpy as np
import tensorflow as tf


def simulate_train_labels(cfg, full, run_dir):
    """Apply ``cfg.partial_labels`` (``none`` | ``fpc:N`` | ``rps:p``) with ``cfg.seed``.

    Args:
        cfg: TrainConfig.
        full: int8 ``[N, C]`` training labels in {1, 0, -1}.
        run_dir: str; ``partial_labels.json`` (kept counts per class) is written there.

    Returns:
        int8 ``[N, C]``: ``full`` itself for ``none``, else a copy with hidden entries ``-1``.

    Raises:
        ValueError: a malformed ``--partial-labels`` value (from
            :func:`mll_tf.data.simulation.simulate`).
    """
    from mll_tf.data.simulation import partial_label_stats, simulate

    if cfg.partial_labels in ("", "none"):
        labels, stats = full, partial_label_stats(full, full)
    else:
        labels, stats = simulate(full, cfg.partial_labels, seed=cfg.seed)
    with open(os.path.join(run_dir, "partial_labels.json"), "w") as f:
        json.dump({"scheme": cfg.partial_labels or "none", "seed": cfg.seed, **stats}, f, indent=1)
    return labels


def log_scalars(writer, step, metrics):
    """Write the finite values of ``metrics`` (name -> float) as TensorBoard scalars at ``step``."""
    with writer.as_default(step=step):
        for k, v in metrics.items():
            if np.isfinite(v):
                tf.summary.scalar(k, v)
    writer.flush()


def append_history(run_dir, epoch, step, metrics):
    """Append one row (``epoch``, ``step``, sorted metrics) to ``<run_dir>/history.csv``."""
    path = os.path.join(run_dir, "history.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "step"] + sorted(metrics))
        if new:
            w.writeheader()
        w.writerow({"epoch": epoch, "step": step, **metrics})


def finish_run(run_dir, metrics):
    """Save ``metrics`` to ``final_metrics.json``; if empty (a finished run resumed), reload them."""
    path = os.path.join(run_dir, "final_metrics.json")
    if metrics:
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2)
    elif os.path.exists(path):
        print(f"all rounds already done in {run_dir}; nothing to train")
        with open(path) as f:
            metrics = json.load(f)
    return metrics


def save_schedule(run_dir, rnd, schedule):
    """Atomically save an adaptive learning-rate schedule's state after round ``rnd``."""
    path = os.path.join(run_dir, "lr_schedule.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"round": rnd, "state": schedule.state_dict()}, f)
    os.replace(path + ".tmp", path)


def restore_schedule(run_dir, rnd, schedule):
    """Load the schedule state saved after round ``rnd`` (no-op without a schedule or a matching file)."""
    path = os.path.join(run_dir, "lr_schedule.json")
    if schedule is None or not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    if saved.get("round") == rnd:
        schedule.load_state_dict(saved["state"])

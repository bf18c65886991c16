#!/usr/bin/env python
"""Train a method on a dataset's feature store.

    python experiments/train.py --method lesa --dataset openclipart

``--protocol lesa_nus_wide`` / ``lesa_openimages`` applies the reference
settings (``mll_tf/protocols.py``); explicit flags still win.

Every field of ``mll_tf.training.config.TrainConfig`` is a flag
(``--batch-size 32``, ``--epochs 10``, ``--cpu-replicas 2`` ...). The resolved
configuration is saved as ``<run-dir>/config.yaml``; ``--resume`` continues
the run in ``--run-dir`` from its last checkpoint, with that saved
configuration unless flags override it. Logs go to TensorBoard under
``<run-dir>/tb``:

    tensorboard --logdir runs --host 127.0.0.1
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mll_tf.training.config import TrainConfig  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--no-progress", action="store_true")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=None, metavar="{true,false}")
        elif f.name == "eval_k":
            p.add_argument(flag, dest=f.name, default=None,
                           type=lambda s: tuple(int(x) for x in s.split(",")), metavar="3,5")
        else:
            typ = {int: int, float: float}.get(type(f.default), str)
            p.add_argument(flag, dest=f.name, type=typ, default=None,
                           help=f"(default: {f.default!r})" if f.default != "" else None)
    return p


def resolve_config(args):
    """Defaults <- saved run config (with --resume) <- explicit flags."""
    cfg = TrainConfig()
    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                if getattr(args, f.name) is not None}
    base = dataclasses.replace(cfg, **explicit).apply_protocol(explicit=set(explicit)) \
        if explicit.get("protocol") else dataclasses.replace(cfg, **explicit)
    run_dir = explicit.get("run_dir") or os.path.join(
        "runs", f"{base.method}_{base.dataset}".replace(":", "_").replace("/", "_"))
    saved = os.path.join(run_dir, "config.yaml")
    if args.resume and os.path.exists(saved):
        cfg = TrainConfig.load(saved)
    cfg = dataclasses.replace(cfg, **explicit)
    if explicit.get("protocol"):  # reference settings, except what the command line sets
        cfg = cfg.apply_protocol(explicit=set(explicit))
    cfg.run_dir = run_dir
    return cfg


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    if cfg.cpu_replicas > 1:  # must happen before TensorFlow initialises its devices
        from mll_tf.training.distribute import split_cpu
        split_cpu(cfg.cpu_replicas)
    from mll_tf.registry import get_method
    from mll_tf.training.lesa_trainer import MissingFeaturesError

    train = get_method(cfg.method)
    try:
        train(cfg, resume=args.resume, progress=not args.no_progress)
    except MissingFeaturesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run directory: {cfg.run_dir}\n  evaluate:    python evaluation/evaluate.py --run {cfg.run_dir}\n"
          f"  tensorboard: tensorboard --logdir {cfg.run_dir}/tb --host 127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Draw LESA's attention heads and top labels for image files.

    python evaluation/visualize_attention.py --run runs/lesa_openclipart --images cat.svg photos/

For each image, the backbone recorded in the run's feature store (same
weights, input size, decoding and feature dtype as the extraction) computes
the feature map, the saved LESA model scores the seen labels and, with the
unseen word vectors, the unseen (zero-shot) labels, and one PNG
``<out>/<stem>_attention.png`` shows the image, one attention overlay per head
(titled with the head's best label) and the top-K seen and unseen labels.
Scores are LESA logits (max over heads; unbounded). A directory argument
expands to the .jpg/.jpeg/.png/.svg files directly inside it, sorted. An
unreadable image is reported and skipped; the exit code stays 0.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".svg")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by experiments/train.py")
    p.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="image files and/or folders (their .jpg/.jpeg/.png/.svg files, sorted)")
    p.add_argument("--k", type=int, default=5,
                   help="top labels listed per set (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/attention)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="which saved model")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--allow-random-backbone", action="store_true",
                   help="accept a run whose features came from random backbone weights "
                        "(not reproducible; fresh random weights are used)")
    return p


def expand_images(paths, limit=None):
    """Files as given, folders expanded to their image files (sorted); first ``limit``."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(os.path.join(p, f) for f in os.listdir(p)
                              if f.lower().endswith(IMAGE_EXTENSIONS)
                              and os.path.isfile(os.path.join(p, f))))
        else:
            out.append(p)
    return out[:limit] if limit else out


def _fmt(top):
    return ", ".join(f"{n} {s:.2f}" for n, s in top) or "-"


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.exists(os.path.join(args.run, "config.yaml")):
        print(f"error: {args.run} is not a run directory (no config.yaml); "
              "train one with experiments/train.py", file=sys.stderr)
        return 2
    paths = expand_images(args.images, args.limit)
    if not paths:
        print(f"error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    from mll_tf.visualization.attention import attention_figure, explain_images

    results = explain_images(args.run, paths, k=args.k, checkpoint=args.checkpoint,
                             allow_random_backbone=args.allow_random_backbone)
    out = args.out or os.path.join(args.run, "attention")
    os.makedirs(out, exist_ok=True)
    written, failed, used = 0, 0, set()
    for r in results:
        if "error" in r:
            failed += 1
            print(f"{r['path']}: error: {r['error']}")
            continue
        stem = os.path.splitext(os.path.basename(r["path"]))[0]
        name, n = f"{stem}_attention.png", 1
        while name in used:  # same stem in two folders
            n += 1
            name = f"{stem}_{n}_attention.png"
        used.add(name)
        fig = attention_figure(r["image"], r["attention"], r["grid"], r["seen_top"],
                               r["unseen_top"], r["head_top"], title=os.path.basename(r["path"]))
        png = os.path.join(out, name)
        fig.savefig(png)
        written += 1
        print(f"{r['path']}:\n    seen:   {_fmt(r['seen_top'])}"
              f"\n    unseen: {_fmt(r['unseen_top'])}\n    -> {png}")
    print(f"wrote {written} figures to {out}"
          + (f"; {failed} unreadable image(s)" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Draw LESA's attention heads and top labels for image files (``python evaluation/visualize_attention.py``).

    python evaluation/visualize_attention.py --run runs/lesa_openclipart --images cat.svg photos/

For each image, the backbone recorded in the run's feature store (same
weights, input size, decoding and feature dtype as the extraction) computes
the feature map, the saved LESA model scores the seen labels and, with the
unseen word vectors, the unseen (zero-shot) labels, and one PNG
``<out>/<stem>_attention.png`` shows the image, one attention overlay per head
(titled with the head's best label) and the top-K seen and unseen labels.
Scores are LESA logits (max over heads; unbounded). A folder expands to its
image files (SVG included), sorted; further paths may follow ``--images``.
An unreadable image is reported and skipped; the exit code stays 0.
"""

import os
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main"]

PROG = "evaluation/visualize_attention.py"


def build_flags():
    fs = FlagSet(PROG, __doc__)
    fs.define("run", None, "LESA run directory written by experiments/train.py", required=True)
    fs.define("images", None, "an image file or folder (more paths may follow)", required=True)
    fs.define("k", 5, "top labels listed per set", min=1)
    fs.define("out", None, "output folder (default: <run>/attention)")
    fs.define("checkpoint", "best", "which saved model", choices=("best", "last"))
    fs.define("limit", None, "use only the first N images", kind="int", min=1)
    fs.define("allow_random_backbone", False, "accept a run whose features came from random backbone "
              "weights (not reproducible; fresh random weights are used)")
    return fs


def _fmt(top):
    return ", ".join(f"{n} {s:.2f}" for n, s in top) or "-"


def _run(argv):
    fs = build_flags()
    rest = fs.parse(argv, positional=True)
    if rest is None:
        return 0
    if not os.path.exists(os.path.join(fs.run, "config.yaml")):
        raise UsageError(f"--run {fs.run} is not a run directory (no config.yaml); train one with "
                         "experiments/train.py")
    import_tensorflow_quietly()
    from mll_tf.data.extraction import list_images
    from mll_tf.tasks.lesa import explain_images
    from mll_tf.visualization.attention import attention_figure

    paths = list_images([fs.images] + list(rest), fs.limit)
    if not paths:
        raise UsageError(f"--images: no image files in {' '.join([fs.images] + list(rest))}")
    results = explain_images(fs.run, paths, k=fs.k, checkpoint=fs.checkpoint,
                             allow_random_backbone=fs.allow_random_backbone)
    out = fs.out or os.path.join(fs.run, "attention")
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
    print(f"wrote {written} figures to {out}" + (f"; {failed} unreadable image(s)" if failed else ""))
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())

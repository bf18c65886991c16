"""Tiny on-disk fixtures in the official layouts (not collected by pytest).

``make_fmnist_idx``, ``make_coco_tree`` and ``make_attributes_tree`` write a
dataset under ``root`` and return a dict of what an adapter should find, so
other tests (CLI, partial-label simulation) can reuse them.
"""

import gzip
import json
import os

import numpy as np

FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def write_idx(path, array, magic=None):
    """Write ``array`` (uint8) as a gzip IDX file; ``magic`` overrides the header's."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = int(magic).to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def fmnist_items(n, offset):
    """``n`` distinct 28x28 uint8 items: item ``j`` is ``offset + j`` in base 250,
    written as a constant (value ``1 + (offset+j) % 250``) with a bright
    marker row whose length encodes ``(offset+j) // 250`` (so offset + n <= 6750);
    never all-black. Train items use offset 0, test items offset 5000."""
    items = np.zeros((n, 28, 28), np.uint8)
    for j in range(n):
        g = offset + j
        items[j, 4:24, 4:24] = 1 + g % 250
        items[j, 0, :1 + g // 250] = 255
    return items


def make_fmnist_idx(root, n_train=40, n_test=20, seed=0):
    """Official Fashion-MNIST file names with tiny content, in real gzip IDX.

    Args:
        n_train: int <= 5000; n_test: int <= 1750 (item encoding limit).

    Returns:
        dict with ``root``, ``train_images`` uint8 [n_train, 28, 28],
        ``train_labels`` uint8 [n_train], ``test_images``, ``test_labels``
        (labels cover all 10 classes when n >= 10) and ``files``.
    """
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {"root": root, "files": {}}
    for which, n, offset in (("train", n_train, 0), ("test", n_test, 5000)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = fmnist_items(n, offset)
        img_file, lab_file = (os.path.join(root, f) for f in FMNIST_FILES[which])
        write_idx(img_file, images, 0x00000803)
        write_idx(lab_file, labels, 0x00000801)
        out[f"{which}_images"], out[f"{which}_labels"] = images, labels
        out["files"][which] = (img_file, lab_file)
    return out


def _write_jpeg(path, color, size=(40, 30)):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


# (id, name) out of id order, with gaps like the real 1..90 ids
COCO_CATEGORIES = [(18, "dog"), (1, "person"), (90, "toothbrush"), (3, "car")]
COCO_NAMES = ["person", "car", "dog", "toothbrush"]  # sorted by id


def make_coco_tree(root, n_train=12):
    """A tiny COCO 2014 tree: annotations/*.json plus JPEGs.

    train2014: ``n_train`` images (ids 1..n_train); image 2 has no annotation
    (kept, all-negative) and image 3's file is missing. val2014: ids 101..103.

    Returns:
        dict with ``root``, ``label_names`` (category order), ``labels``
        ({image_id str: int8 [4]}), ``missing`` (image ids), ``train_ids``,
        ``test_ids``, ``captions`` ({image_id: [captions]}), ``caption_labels``
        ({image_id: set of words}) and ``word_counts`` (train token counts of
        the non-stop words used by the fixture captions).
    """
    ann = os.path.join(root, "annotations")
    os.makedirs(ann, exist_ok=True)
    # instance category ids per image (train ids 1..n, val ids 101..103)
    inst = {i: [[1], [], [1, 3], [18, 18], [90], [1, 18, 90]][i % 6] for i in range(1, n_train + 1)}
    inst[2] = []
    inst.update({101: [3], 102: [1, 90], 103: []})
    caps = {i: [["a dog on a red sofa", "the red dog sleeps"],
                ["a man riding a bike", "man with bike"],
                ["two cats", "cats on the sofa"]][i % 3] for i in range(1, n_train + 1)}
    caps.update({101: ["a red car"], 102: ["dog and man"], 103: ["sofa sofa"]})
    expect = {"root": root, "label_names": COCO_NAMES, "labels": {}, "missing": [],
              "train_ids": [], "test_ids": [], "captions": {}, "caption_labels": {}}
    order = [c for c, _ in sorted(COCO_CATEGORIES)]
    for src, ids in (("train2014", range(1, n_train + 1)), ("val2014", (101, 102, 103))):
        images, anns, cap_anns = [], [], []
        for i in ids:
            fn = f"COCO_{src}_{i:012d}.jpg"
            images.append({"id": i, "file_name": fn, "width": 40, "height": 30})
            for c in inst[i]:
                anns.append({"id": len(anns) + 1 + 1000 * (src == "val2014"), "image_id": i,
                             "category_id": c, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0})
            for cap in caps[i]:
                cap_anns.append({"id": len(cap_anns) + 1, "image_id": i, "caption": cap})
            image_id = f"{src}/{fn}"
            y = np.zeros(4, np.int8)
            y[[order.index(c) for c in set(inst[i])]] = 1
            expect["labels"][image_id] = y
            expect["captions"][image_id] = caps[i]
            expect["caption_labels"][image_id] = {w for c in caps[i] for w in c.lower().split()}
            (expect["train_ids"] if src == "train2014" else expect["test_ids"]).append(image_id)
            if src == "train2014" and i == 3:
                expect["missing"].append(image_id)
                continue
            _write_jpeg(os.path.join(root, src, fn), (10 * (i % 20), 80, 160))
        cats = [{"id": c, "name": n, "supercategory": "x"} for c, n in COCO_CATEGORIES]
        with open(os.path.join(ann, f"instances_{src}.json"), "w") as f:
            json.dump({"info": {}, "images": images, "annotations": anns, "categories": cats}, f)
        with open(os.path.join(ann, f"captions_{src}.json"), "w") as f:
            json.dump({"info": {}, "images": images, "annotations": cap_anns}, f)
    counts = {}
    for i in range(1, n_train + 1):
        for cap in caps[i]:
            for w in cap.split():
                counts[w] = counts.get(w, 0) + 1
    expect["word_counts"] = counts
    return expect


# A 3-attribute spec in the style of CSL's 7 + 4 + 10 = 21 classes, smaller.
ATTRIBUTE_SPEC = {
    "neck": ["round", "v", "collar"],
    "sleeve": ["short", "long"],
    "pattern": ["plain", "striped", "dotted", "floral"],
}

# filename, neck, sleeve, pattern, note (ignored column); codes and names mixed
ATTRIBUTE_ROWS = [
    ("a.png", "0", "long", "#N/A", "x"),
    ("b.png", "v", "1", "2", ""),
    ("c.png", "", "NA", "plain", ""),
    ("d.png", "N/A", "0", "3", ""),
    ("e.png", "2", "short", "Striped", ""),
    ("sub/f.png", "0", "0", "0", ""),
    ("missing.png", "1", "1", "1", ""),
    ("broken.png", "1", "0", "1", ""),
]

# expected label rows (neck 3 | sleeve 2 | pattern 4) of the readable images
ATTRIBUTE_LABELS = {
    "a.png": [1, 0, 0, 0, 1, -1, -1, -1, -1],
    "b.png": [0, 1, 0, 0, 1, 0, 0, 1, 0],
    "c.png": [-1, -1, -1, -1, -1, 1, 0, 0, 0],
    "d.png": [-1, -1, -1, 1, 0, 0, 0, 0, 1],
    "e.png": [0, 0, 1, 1, 0, 0, 1, 0, 0],
    "sub/f.png": [1, 0, 0, 1, 0, 1, 0, 0, 0],
}


def write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_attributes_tree(root, layout="files", spec_format="json"):
    """An attribute-CSV dataset with small PNGs under ``root/images``.

    ``layout="files"``: ``train.csv`` holds :data:`ATTRIBUTE_ROWS` (one image
    missing, one unreadable) and ``test.csv`` two more rows. ``layout="single"``:
    ``attributes.csv`` holds 40 rows ``img_XX.png`` split by hash.

    Returns:
        dict with ``root``, ``spec_path``, ``spec``, ``labels``
        ({image_id: list of 9 ints}, readable train images), ``skipped``
        ({image_id: reason prefix}), ``test_ids``, ``rows`` (CSV rows) and
        ``header``.
    """
    from PIL import Image

    img_dir = os.path.join(root, "images")
    os.makedirs(os.path.join(img_dir, "sub"), exist_ok=True)
    header = ["filename", "neck", "sleeve", "pattern", "note"]
    if spec_format == "json":
        spec_path = os.path.join(root, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(ATTRIBUTE_SPEC, f)
    else:
        spec_path = os.path.join(root, "spec.yaml")
        with open(spec_path, "w") as f:
            for a, cs in ATTRIBUTE_SPEC.items():
                f.write(f"{a}: [{', '.join(repr(c) for c in cs)}]\n")

    def png(name, i):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(img_dir, name), format="PNG")

    expect = {"root": root, "spec_path": spec_path, "spec": ATTRIBUTE_SPEC, "header": header}
    if layout == "files":
        rows = list(ATTRIBUTE_ROWS)
        for i, r in enumerate(rows):
            if r[0] == "broken.png":
                with open(os.path.join(img_dir, r[0]), "wb") as f:
                    f.write(b"not an image at all")
            elif r[0] != "missing.png":
                png(r[0], i)
        write_csv(os.path.join(root, "train.csv"), header, rows)
        test_rows = [("t1.png", "collar", "long", "floral", ""), ("t2.png", "#n/a", "", "na", "")]
        for i, r in enumerate(test_rows):
            png(r[0], 100 + i)
        write_csv(os.path.join(root, "test.csv"), header, test_rows)
        expect.update(labels=dict(ATTRIBUTE_LABELS), rows=rows,
                      skipped={"missing.png": "missing file", "broken.png": "unreadable image"},
                      test_ids=["t1.png", "t2.png"])
    else:
        rows = []
        for i in range(40):
            name = f"img_{i:02d}.png"
            png(name, i)
            rows.append((name, str(i % 3), ["short", "long", "#N/A"][i % 3], str(i % 4), ""))
        write_csv(os.path.join(root, "attributes.csv"), header, rows)
        expect.update(labels=None, rows=rows, skipped={}, test_ids=None)
    return expect

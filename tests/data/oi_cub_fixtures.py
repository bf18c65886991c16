"""Tiny OpenImages (v3 2017_11, V6) and CUB-200-2011 trees in the official layouts.

Each builder writes into a folder (a pytest ``tmp_path``) and returns a dict of
what the adapter should produce. Not collected by pytest (no ``test_`` prefix).
"""

import os

import numpy as np

CLASSES = ["/m/a1", "/m/b2", "/m/c3", "/m/d4"]
NAMES = {"/m/a1": "Apple", "/m/b2": "Ball, red", "/m/c3": 'Fiat 500 "topolino"', "/m/d4": "Dog",
         "/m/zz": "Ignored thing", "/m/yy": "Other"}
HEADER = "ImageID,Source,LabelName,Confidence"

# (ImageID, LabelName, Confidence) per split, in file order.
ROWS = {
    "train": [
        ("t1", "/m/a1", 1), ("t1", "/m/b2", 0), ("t1", "/m/zz", 1),
        ("t2", "/m/c3", 1), ("t2", "/m/d4", 0), ("t2", "/m/c3", 1),      # exact duplicate
        ("t3", "/m/a1", 1), ("t3", "/m/b2", 1), ("t3", "/m/a1", 0),      # conflicting pair
        ("t4", "/m/zz", 0),                          # only a MID outside the list
        ("t5", "/m/d4", 1),                                              # image file missing
    ],
    "val": [("v1", "/m/a1", 1), ("v1", "/m/b2", 1), ("v2", "/m/c3", 0)],
    "test": [("s1", "/m/d4", 1), ("s2", "/m/a1", 0), ("s2", "/m/yy", 1)],
}
MISSING_IMAGES = {"t5"}

# Expected labels (conflict="positive") of the images listed in a split.
LABELS = {
    "t1": [1, 0, -1, -1], "t2": [-1, -1, 1, 0], "t3": [1, 1, -1, -1], "t4": [-1, -1, -1, -1],
    "v1": [1, 1, -1, -1], "v2": [-1, -1, 0, -1],
    "s1": [-1, -1, -1, 1], "s2": [0, -1, -1, -1],
}

V6_FILES = {"train": "oidv6-train-annotations-human-imagelabels.csv",
            "val": "validation-annotations-human-imagelabels.csv",
            "test": "test-annotations-human-imagelabels.csv"}
V3_FILES = {"train": "2017_11/train/annotations-human.csv",
            "val": "2017_11/validation/annotations-human.csv",
            "test": "2017_11/test/annotations-human.csv"}
IMAGE_DIRS = {"train": "train", "val": "validation", "test": "test"}


def write_jpeg(path, seed=0, size=(12, 10)):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")


def _write_label_csv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        for image_id, mid, conf in rows:
            f.write(f"{image_id},verification,{mid},{conf}\n")


def _write_descriptions(path, header):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["LabelName", "DisplayName"])
        for mid in ["/m/zz"] + CLASSES + ["/m/yy"]:
            w.writerow([mid, NAMES[mid]])


def make_openimages_tree(root, version):
    """Write an OpenImages tree; ``version`` is ``"v6"`` or ``"v3"``.

    Returns:
        dict with ``classes``, ``label_text``, ``label_files`` (split -> abs
        path), ``descriptions_file``, ``classes_file``, ``labels`` (ImageID ->
        expected list), ``split_ids`` (split -> expected ImageIDs in order for
        the version's default ``drop_empty``), ``missing`` (split -> ids),
        ``positives`` / ``negatives`` (split -> {MID: count}), ``csv_stats``
        (split -> expected counters), ``rows`` (the raw rows).
    """
    if version == "v6":
        files = V6_FILES
        classes_file, desc_file = "oidv6-classes-trainable.txt", "oidv6-class-descriptions.csv"
        header = True
    else:
        files = V3_FILES
        classes_file, desc_file = "2017_11/classes-trainable.txt", "2017_11/class-descriptions.csv"
        header = False
    os.makedirs(os.path.join(root, os.path.dirname(classes_file)), exist_ok=True)
    with open(os.path.join(root, classes_file), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    _write_descriptions(os.path.join(root, desc_file), header)
    seed = 0
    for split, rows in ROWS.items():
        _write_label_csv(os.path.join(root, files[split]), rows)
        for image_id in dict.fromkeys(r[0] for r in rows):
            if image_id not in MISSING_IMAGES:
                seed += 1
                write_jpeg(os.path.join(root, IMAGE_DIRS[split], image_id + ".jpg"), seed)
    drop_empty = version == "v6"
    split_ids = {
        "train": ["t1", "t2", "t3"] + ([] if drop_empty else ["t4"]),
        "val": ["v1", "v2"], "test": ["s1", "s2"]}
    positives, negatives = {}, {}
    for split, ids in split_ids.items():
        y = np.array([LABELS[i] for i in ids])
        positives[split] = dict(zip(CLASSES, (y == 1).sum(0).tolist()))
        negatives[split] = dict(zip(CLASSES, (y == 0).sum(0).tolist()))
    csv_stats = {
        "train": {"rows": 11, "ignored_rows": 2, "ignored_mids": 1, "duplicate_rows": 2,
                  "conflicting_pairs": 1, "images": 5, "images_without_class_labels": 1,
                  "kept": len(split_ids["train"]), "dropped_without_class_labels": int(drop_empty),
                  "skipped_by_reason": {"missing image file": 1}},
        "val": {"rows": 3, "ignored_rows": 0, "ignored_mids": 0, "duplicate_rows": 0,
                "conflicting_pairs": 0, "images": 2, "images_without_class_labels": 0,
                "kept": 2, "dropped_without_class_labels": 0, "skipped_by_reason": {}},
        "test": {"rows": 3, "ignored_rows": 1, "ignored_mids": 1, "duplicate_rows": 0,
                 "conflicting_pairs": 0, "images": 2, "images_without_class_labels": 0,
                 "kept": 2, "dropped_without_class_labels": 0, "skipped_by_reason": {}},
    }
    return {
        "classes": list(CLASSES),
        "label_text": [NAMES[m] for m in CLASSES],
        "label_files": {s: os.path.abspath(os.path.join(root, f)) for s, f in files.items()},
        "descriptions_file": os.path.abspath(os.path.join(root, desc_file)),
        "classes_file": os.path.abspath(os.path.join(root, classes_file)),
        "labels": {k: list(v) for k, v in LABELS.items()},
        "split_ids": split_ids,
        "missing": {"train": ["t5"], "val": [], "test": []},
        "positives": positives,
        "negatives": negatives,
        "csv_stats": csv_stats,
        "rows": ROWS,
    }


CUB_ATTRIBUTES = [
    "has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue",
    "has_size::small_(5_-_9_in)", "has_wing_shape::rounded-wings",
    "has_bill_length::about_the_same_as_head",
]
CUB_ATTRIBUTE_TEXT = [
    "bill shape curved up or down", "bill shape dagger", "wing color blue", "size small 5 9 in",
    "wing shape rounded wings", "bill length about the same as head"]


def make_cub_tree(root, n_images=24, attributes_at="top"):
    """Write a CUB_200_2011 tree with ``n_images`` images and 6 attributes.

    Args:
        root: str, folder receiving ``CUB_200_2011/`` (and ``attributes.txt``).
        n_images: int >= 8.
        attributes_at: ``"top"`` (``<root>/attributes.txt``, the tarball) or
            ``"inside"`` (``CUB_200_2011/attributes/attributes.txt``, IMCL).

    Returns:
        dict with ``cub_dir``, ``attributes`` (names), ``attribute_text``,
        ``paths`` (CUB id -> relative path), ``is_train`` (id -> bool),
        ``present`` / ``certainty`` (int arrays ``[n, 6]``), ``labels``
        (relative path -> expected int8 list with min_certainty=1),
        ``missing_pair`` ((id, attribute id) without a row), ``six_field_rows``
        (count), ``skipped`` (relative path -> reason), ``label_file``.
    """
    cub = os.path.join(root, "CUB_200_2011")
    os.makedirs(os.path.join(cub, "attributes"), exist_ok=True)
    names_path = (os.path.join(root, "attributes.txt") if attributes_at == "top"
                  else os.path.join(cub, "attributes", "attributes.txt"))
    with open(names_path, "w") as f:
        f.writelines(f"{i} {n}\n" for i, n in enumerate(CUB_ATTRIBUTES, start=1))
    rng = np.random.default_rng(123)
    ids = list(range(1, n_images + 1))
    paths = {k: f"{(k % 3) + 1:03d}.Species_{(k % 3) + 1}/Bird_{k:04d}.jpg" for k in ids}
    is_train = {k: k % 3 != 0 for k in ids}
    present = rng.integers(0, 2, (n_images, len(CUB_ATTRIBUTES)))
    certainty = rng.integers(1, 5, (n_images, len(CUB_ATTRIBUTES)))
    missing_pair = (2, 3)
    with open(os.path.join(cub, "images.txt"), "w") as f:
        f.writelines(f"{k} {paths[k]}\n" for k in ids)
    with open(os.path.join(cub, "train_test_split.txt"), "w") as f:
        f.writelines(f"{k} {int(is_train[k])}\n" for k in ids)
    label_file = os.path.join(cub, "attributes", "image_attribute_labels.txt")
    six = 0
    with open(label_file, "w") as f:
        for k in ids:
            for a in range(1, len(CUB_ATTRIBUTES) + 1):
                if (k, a) == missing_pair:
                    continue
                p, c = present[k - 1, a - 1], certainty[k - 1, a - 1]
                if k == 5 and a in (1, 2):  # the real file's six-field rows
                    f.write(f"{k} {a} {p} {c} 0 12.5\n")
                    six += 1
                else:
                    f.write(f"{k} {a} {p} {c} 3.25\n")
    skipped = {paths[n_images]: "missing image file", paths[n_images - 1]: "empty file"}
    for k in ids:
        full = os.path.join(cub, "images", paths[k])
        if paths[k] in skipped:
            if skipped[paths[k]] == "empty file":
                os.makedirs(os.path.dirname(full), exist_ok=True)
                open(full, "wb").close()
            continue
        write_jpeg(full, k)
    labels = {}
    for k in ids:
        y = present[k - 1].astype(np.int8).copy()
        if k == missing_pair[0]:
            y[missing_pair[1] - 1] = -1
        labels[paths[k]] = y.tolist()
    return {
        "cub_dir": os.path.abspath(cub), "attributes": list(CUB_ATTRIBUTES),
        "attribute_text": list(CUB_ATTRIBUTE_TEXT), "paths": paths, "is_train": is_train,
        "present": present, "certainty": certainty, "labels": labels, "missing_pair": missing_pair,
        "six_field_rows": six, "skipped": skipped, "label_file": os.path.abspath(label_file),
        "names_file": os.path.abspath(names_path),
    }

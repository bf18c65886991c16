"""Tiny dataset trees in the official layouts of NUS-WIDE, Open Images 2018_04
and DOR-ML json (not collected by pytest).

Each ``make_*_tree(root)`` writes a few small real JPEGs plus the metadata
files and returns a dict of expectations computed independently of the
adapters: ``options`` (adapter keyword arguments, besides ``root``),
``label_names``, ``splits`` (split -> image ids in order), ``labels``
(image id -> list of int in {1, 0, -1}), ``skipped`` (split -> {image id:
reason prefix}) and dataset-specific entries. Reusable by CLI end-to-end
tests.
"""

import io
import json
import os
import pickle

import numpy as np
from PIL import Image


def _jpeg(path, seed, size=64):
    """Random-noise RGB JPEG (quality 95): a 64x64 one is > 4000 bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return len(buf.getvalue())


def _tiny_jpeg(path):
    """A valid 8x8 JPEG of well under 4000 bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, "JPEG")


def _write(path, text, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


# --------------------------------------------------------------------------- NUS-WIDE

NUS_TAGS = ["sky", "water", "cat", "dog", "tree", "car", "beach", "sunset", "flower", "bird",
            "road", "house"]
NUS_CONCEPTS = ["animal", "beach", "cat", "sky"]   # alphabetical; 3 are also tags


def make_nus_wide_tree(root):
    """NUS-WIDE layout: 12 tags (3 are concepts), 4 concepts, 12 images.

    Train list (in this order) = Imagelist rows 5, 0, 7, 2, 9, 11, 3, 8;
    test list = rows 1, 4, 6, 10. Row 0 has no file, rows 2 and 6 are tiny
    (< 4000 bytes), row 11 is a byte copy of the placeholder
    ``<root>/temps/test.jpg``. With ``val_size=2``: val = rows 5, 7;
    train = rows 9, 3, 8; test = rows 1, 4, 10. Without the placeholder
    option, row 11 is usable (train = rows 9, 11, 3, 8).
    """
    rng = np.random.default_rng(7)
    n = 12
    folders = ["actor", "beach", "cityscape"]
    rel = [f"{folders[i % 3]}\\{i + 1:04d}_{2124494179 + 97 * i}.jpg" for i in range(n)]
    tags = (rng.random((n, len(NUS_TAGS))) < 0.35).astype(int)
    concepts = (rng.random((n, len(NUS_CONCEPTS))) < 0.4).astype(int)
    train_rows, test_rows = [5, 0, 7, 2, 9, 11, 3, 8], [1, 4, 6, 10]

    _write(os.path.join(root, "ImageList", "Imagelist.txt"),
           "".join(f"C:\\ImageData\\Flickr\\{r}\r\n" for r in rel))
    _write(os.path.join(root, "ImageList", "TrainImagelist.txt"),
           "".join(f"{rel[i]}\r\n" for i in train_rows))
    _write(os.path.join(root, "ImageList", "TestImagelist.txt"),
           "".join(f"{rel[i]}\r\n" for i in test_rows))
    _write(os.path.join(root, "NUS_WID_Tags", "TagList1k.txt"), "".join(t + "\n" for t in NUS_TAGS))
    _write(os.path.join(root, "NUS_WID_Tags", "AllTags1k.txt"),
           "".join("\t".join(map(str, row)) + "\t\n" for row in tags))
    _write(os.path.join(root, "Concepts81.txt"), "".join(c + "\n" for c in NUS_CONCEPTS))
    for j, c in enumerate(NUS_CONCEPTS):
        _write(os.path.join(root, "AllLabels", f"Labels_{c}.txt"),
               "".join(f"{v}\n" for v in concepts[:, j]))

    placeholder = os.path.join(root, "temps", "test.jpg")
    assert _jpeg(placeholder, seed=999) > 4000
    ids = [f"Flickr/{r.replace(chr(92), '/')}" for r in rel]
    for i in range(n):
        path = os.path.join(root, ids[i])
        if i == 0:
            continue                      # missing
        if i in (2, 6):
            _tiny_jpeg(path)
        elif i == 11:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(placeholder, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
        else:
            assert _jpeg(path, seed=i) > 4000

    seen = [t for t in NUS_TAGS if t not in NUS_CONCEPTS]
    seen_idx = [NUS_TAGS.index(t) for t in seen]
    labels = {ids[i]: concepts[i].tolist() + tags[i, seen_idx].tolist() for i in range(n)}
    return {
        "options": {"val_size": 2, "placeholder": placeholder},
        "placeholder": placeholder,
        "label_names": NUS_CONCEPTS + seen,
        "unseen": list(NUS_CONCEPTS),
        "seen": seen,
        "splits": {"val": [ids[5], ids[7]], "train": [ids[9], ids[3], ids[8]],
                   "test": [ids[1], ids[4], ids[10]]},
        "train_without_placeholder": [ids[9], ids[11], ids[3], ids[8]],
        "skipped": {"val": {ids[0]: "missing file"},
                    "train": {ids[2]: "file too small", ids[11]: "placeholder image"},
                    "test": {ids[6]: "file too small"}},
        "labels": labels,
        "ids": ids,
    }


# --------------------------------------------------------------------------- Open Images

OI_SEEN = [f"/m/0s0{i}" for i in range(1, 7)]
OI_UNSEEN = [f"/m/0u0{i}" for i in range(1, 5)]
OI_TOP = [2, 0]                      # -> unseen_eval = [u03, u01]
OI_NAMES = {m: f"seen thing {i}" for i, m in enumerate(OI_SEEN, 1)}
OI_NAMES.update({m: f"unseen thing {i}" for i, m in enumerate(OI_UNSEEN, 1)})
OI_NAMES["/m/0s02"] = "Ducks, geese and swans"     # a quoted name with commas


def _oi_id(i):
    return f"{0xa0000000 + i:016x}"


def make_openimages_tree(root, unseen_format="pkl"):
    """Open Images 2018_04 layout: 6 seen, 4 unseen (2 evaluated), 13 images.

    Train CSV (images A..F): A seen positive (+ an unseen positive); B a
    repeated (image, MID) pair given 1, then 0 (a positive wins: 1, although
    the later row says 0 -- the one rule of every OpenImages adapter,
    independent of row order); C only a negative
    and D only an unseen positive (both left out of train: no positive seen
    label); E missing file; F with one row of an unknown MID (ignored).
    Validation keeps images without positives; test has seen and unseen
    labels and one missing file.

    Args:
        unseen_format: ``"pkl"`` (numpy object array, pickle protocol 2, as
            LESA's ``unseen_labels.pkl``) or ``"txt"``.
    """
    meta = os.path.join(root, "2018_04")
    _write(os.path.join(meta, "classes-trainable.txt"), "".join(m + "\n" for m in OI_SEEN))
    if unseen_format == "pkl":
        os.makedirs(meta, exist_ok=True)
        with open(os.path.join(meta, "unseen_labels.pkl"), "wb") as f:
            pickle.dump(np.array(OI_UNSEEN, dtype=object), f, protocol=2)
    else:
        _write(os.path.join(meta, "unseen_labels.txt"), "".join(m + "\n" for m in OI_UNSEEN))
    _write(os.path.join(meta, "top_400_unseen.csv"), "\ufeff" + "".join(f"{i}\r\n" for i in OI_TOP))
    desc = dict(OI_NAMES, **{"/m/0other": "Something else"})
    _write(os.path.join(meta, "class-descriptions.csv"),
           "".join(f'{m},"{t}"\n' if "," in t else f"{m},{t}\n" for m, t in desc.items()))

    s, u = OI_SEEN, OI_UNSEEN
    A, B, C, D, E, F = (_oi_id(i) for i in range(6))
    G, H, I_ = (_oi_id(i) for i in range(10, 13))
    J, K, L, M = (_oi_id(i) for i in range(20, 24))
    rows = {
        "train": [(A, s[0], 1), (A, s[1], 0), (B, s[2], 1), (A, u[0], 1), (B, s[2], 0),
                  (B, s[3], 1), (C, s[4], 0), (D, u[1], 1), (E, s[5], 1), (F, s[1], 1),
                  (F, "/m/0bogus", 1)],
        "validation": [(G, s[0], 1), (H, s[1], 0), (I_, u[2], 1), (I_, s[3], 0)],
        "test": [(J, s[0], 1), (J, u[2], 1), (J, u[0], 0), (K, s[5], 0), (K, u[3], 1),
                 (L, u[1], 1), (M, s[0], 1)],
    }
    for name, rs in rows.items():
        _write(os.path.join(meta, f"{name}-annotations-human-imagelabels.csv"),
               "ImageID,Source,LabelName,Confidence\n"
               + "".join(f"{i},verification,{m},{c}\n" for i, m, c in rs))
    missing = {E, M}
    for name, rs in rows.items():
        for k, image in enumerate(dict.fromkeys(i for i, _, _ in rs)):
            if image not in missing:
                _jpeg(os.path.join(root, "image_data", name, image + ".jpg"),
                      seed=int(image, 16) % 1000, size=16 + k)

    names = u + s

    def lab(**v):
        y = [-1] * len(names)
        for m, c in v.items():
            y[names.index("/m/" + m)] = c
        return y

    rid = {}
    for name in rows:
        for i, _, _ in rows[name]:
            rid[i] = f"image_data/{name}/{i}.jpg"
    labels = {
        rid[A]: lab(**{"0s01": 1, "0s02": 0, "0u01": 1}),
        rid[B]: lab(**{"0s03": 1, "0s04": 1}),        # 0s03: rows 1 then 0, a positive wins
        rid[F]: lab(**{"0s02": 1}),
        rid[G]: lab(**{"0s01": 1}), rid[H]: lab(**{"0s02": 0}),
        rid[I_]: lab(**{"0u03": 1, "0s04": 0}),
        rid[J]: lab(**{"0s01": 1, "0u03": 1, "0u01": 0}),
        rid[K]: lab(**{"0s06": 0, "0u04": 1}), rid[L]: lab(**{"0u02": 1}),
    }
    return {
        "options": {},
        "label_names": names,
        "label_text": [OI_NAMES[m] for m in names],
        "unseen": list(u), "seen": list(s), "unseen_eval": [u[i] for i in OI_TOP],
        "splits": {"train": [rid[A], rid[B], rid[F]], "val": [rid[G], rid[H], rid[I_]],
                   "test": [rid[J], rid[K], rid[L]]},
        "skipped": {"train": {rid[E]: "missing file"}, "test": {rid[M]: "missing file"}},
        "labels": labels,
        "unknown_mid_rows": {"train": 1, "val": 0, "test": 0},
        "duplicate_rows": {"train": 1, "val": 0, "test": 0},
        "conflicting_pairs": {"train": 1, "val": 0, "test": 0},
        "train_images_without_positive_seen": 2,   # C and D
        "meta_dir": meta,
    }


# --------------------------------------------------------------------------- DOR-ML json

def make_json_tree(root):
    """DOR-ML json layout: ``train.json`` and ``val.json`` (no test), 4 classes.

    Classes are listed unsorted (and in a different order in each file);
    ``images/a.jpg`` repeats in train (second entry skipped) and is also in
    val; ``images/missing.jpg`` has no file; ``images/b.jpg`` has no labels.
    """
    for k, name in enumerate(["a.jpg", "b.jpg", "sub/c.jpg", "d.jpg"]):
        _jpeg(os.path.join(root, "images", name), seed=100 + k, size=20 + k)
    train = {"classes": ["dog", "cat", "bird", "person"],
             "images": [["images/a.jpg", ["dog", "dog", "person"]], ["images/b.jpg", []],
                        ["images/sub/c.jpg", ["cat"]], ["images/missing.jpg", ["bird"]],
                        ["images/a.jpg", ["cat"]]]}
    val = {"classes": ["person", "bird", "cat", "dog"],
           "images": [["images/d.jpg", ["bird", "cat"]], ["images/a.jpg", ["dog"]]]}
    for name, data in (("train", train), ("val", val)):
        with open(os.path.join(root, name + ".json"), "w") as f:
            json.dump(data, f)
    return {
        "options": {},
        "label_names": ["bird", "cat", "dog", "person"],
        "splits": {"train": ["images/a.jpg", "images/b.jpg", "images/sub/c.jpg"],
                   "val": ["images/d.jpg", "images/a.jpg"]},
        "labels": {"train": {"images/a.jpg": [0, 0, 1, 1], "images/b.jpg": [0, 0, 0, 0],
                             "images/sub/c.jpg": [0, 1, 0, 0]},
                   "val": {"images/d.jpg": [1, 1, 0, 0], "images/a.jpg": [0, 0, 1, 0]}},
        "skipped": {"train": {"images/missing.jpg": "missing file",
                              "images/a.jpg": "repeated entry"}},
    }

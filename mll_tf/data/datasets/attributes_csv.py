"""Attribute tables (one CSV row per image) as grouped multi-label data.

This is CSL's fashion-attribute use case: each image has several attributes
(neck type, sleeve length, pattern, ...), each attribute takes one of a few
mutually exclusive classes, and many cells are unknown (``#N/A``).

Layout::

    <root>/train.csv, <root>/val.csv, <root>/test.csv   (whichever exist), or
    <root>/attributes.csv                               (split by filename hash)
    <root>/images/<filename>                            (option image_dir)

CSV format: a header row; an image column (default ``filename``, option
``image_column``) holding a path relative to ``image_dir``; one column per
attribute. A cell holds the class, as a class name or an integer code
(0-based index into the spec's class list). ``#N/A``, ``NA``, ``N/A`` (any
case) and empty cells are unknown. Files are read as UTF-8 (a BOM is allowed)
unless the option ``encoding`` names another codec (``--dataset-options
encoding=latin-1``); a file that does not decode raises ``ValueError`` naming
the file, the line and the option, not a ``UnicodeDecodeError`` traceback.

Labels: columns are the concatenation of the attribute groups, named
``"<attribute>=<class>"``. For a known attribute the group is one-hot (1 for
the class, 0 for the other classes of that attribute: they are known to be
absent because the classes exclude each other); for an unknown attribute the
whole group is -1.

Classes: with ``spec`` (a YAML/JSON file or a dict ``{attribute: [class
names in order]}``, e.g. neck type 7 + sleeve length 4 + pattern 10 = 21
columns), attributes follow the spec order and a cell is first matched to a
class name (exactly, then case-insensitively), then read as an integer code;
anything else raises ``ValueError`` naming the CSV file, row, attribute and
value. CSV columns not in the spec are ignored (listed in
``extra["ignored_columns"]``). Without a spec every non-image column is an
attribute and its classes are its distinct known values over all CSV files,
sorted (numerically if all are integers).

Splits: with per-split files, each file is one split (absent files give
empty splits). With a single ``attributes.csv``, ``u = int(sha1(image_id)
[:8], 16) / 2**32`` where ``image_id`` is the normalised filename
(``./a/../b.png`` -> ``b.png``): ``u < test_fraction`` -> test, ``u < test_fraction +
val_fraction`` -> val, else train.

Images: a path resolving outside ``image_dir`` (``..``, absolute path,
symlink) raises ``ValueError`` naming the row and the path. Missing, empty or
unreadable files (PIL cannot identify/verify them, when ``verify_images``)
are skipped with the reason.

Oversampling (``oversample_to=K``, train split only): attributes are visited
in column order and, within an attribute, classes in order. While a class has
fewer than ``K`` train images labelled with it (counting copies already
added), copies of its images are appended, round-robin over a permutation
seeded by ``(seed, attribute index, class index)``; an image appears at most
``max_repeat`` times in all (original + copies), so a class with ``n``
images cannot pass ``n * max_repeat``. Copy ``k`` of image ``id`` is a new
record ``"<id>#aug<k>"`` (path ``"<path>#aug<k>"``) with the SAME label
vector, unknown groups included; ``load_image``
(:func:`mll_tf.data.augment_np.load_with_augmentation`) decodes it with a
deterministic flip / random-resized crop / brightness jitter seeded by ``k``.
Because an image carries all its attributes, a copy made for a rare class of
one attribute also adds to a (possibly common) class of every other
attribute: the "after" counts in ``extra["oversampling"]`` are not balanced
everywhere. Nothing is printed; the CLI prints the report.
"""

import codecs
import collections
import csv
import hashlib
import json
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.augment_np import PREPROCESSING, load_with_augmentation
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "data/attributes"
UNKNOWN_TOKENS = frozenset({"#n/a", "na", "n/a", ""})
SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
SINGLE_FILE = "attributes.csv"
UNKNOWN_ROW = "unknown"


def check_encoding(encoding, adapter):
    """The Python codec name of ``encoding`` (UTF-8 read BOM-tolerant as ``utf-8-sig``).

    Raises:
        ValueError: ``"<adapter>: unknown encoding '<x>' (option encoding=)"``.
    """
    try:
        name = codecs.lookup(str(encoding)).name
    except LookupError:
        raise ValueError(f"{adapter}: unknown encoding {encoding!r} (option encoding=, e.g. "
                         "--dataset-options encoding=latin-1)") from None
    return "utf-8-sig" if name == "utf-8" else name


def decode_error(path, encoding, error, adapter):
    """A ``ValueError`` naming ``path``, the line of the first bad byte and the option.

    Args:
        path: str, the file that failed to decode.
        encoding: str, the codec used.
        error: the ``UnicodeDecodeError``.
        adapter: str, the adapter name (message prefix).
    """
    line, where = None, ""
    try:
        with open(path, "rb") as f:
            data = f.read()
        data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f" line {line} (byte 0x{data[e.start]:02x} at offset {e.start})"
    except OSError:
        pass
    shown = "utf-8" if encoding == "utf-8-sig" else encoding
    return ValueError(f"{adapter}: {path}{where} is not valid {shown} text ({error.reason}); pass "
                      "the file's encoding with the adapter option encoding= (--dataset-options "
                      "encoding=latin-1)")


def load_spec(spec):
    """Read an attribute spec: ``{attribute: [class names in order]}``.

    Args:
        spec: dict, or str path of a ``.json`` or YAML (``.yaml``/``.yml``) file.

    Returns:
        dict attribute (str) -> list of str class names (insertion order kept).

    Raises:
        FileNotFoundError: naming the spec file.
        ValueError: naming the spec file (or "spec") when it is not a mapping
            of non-empty lists of distinct names, or a name is a YAML boolean
            (quote ``"yes"``/``"no"``).
    """
    where = "spec"
    if isinstance(spec, (str, os.PathLike)):
        where = str(spec)
        if not os.path.exists(where):
            raise FileNotFoundError(f"attributes_csv: spec file {where} not found")
        try:
            with open(where, encoding="utf-8-sig") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"attributes_csv: spec file {where} is not valid UTF-8 ({e.reason} at "
                             f"byte {e.start}); save it as UTF-8 (JSON and YAML are UTF-8)") from None
        try:
            if where.lower().endswith(".json"):
                spec = json.loads(text)
            else:
                import yaml
                spec = yaml.safe_load(text)
        except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
            raise ValueError(f"attributes_csv: cannot parse spec file {where}: {e}") from e
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"attributes_csv: {where} must map attribute -> list of class names")
    out = {}
    for attr, classes in spec.items():
        if not isinstance(classes, list) or not classes:
            raise ValueError(f"attributes_csv: {where}: attribute {attr!r} needs a non-empty "
                             "list of class names")
        names = []
        for c in classes:
            if isinstance(c, bool) or c is None or isinstance(c, (list, dict)):
                raise ValueError(f"attributes_csv: {where}: attribute {attr!r} has class {c!r}; "
                                 "write class names as (quoted) strings")
            names.append(str(c).strip())
        if len(set(names)) != len(names):
            raise ValueError(f"attributes_csv: {where}: attribute {attr!r} lists a class twice")
        out[str(attr)] = names
    return out


def is_unknown(value):
    """True for ``#N/A``, ``NA``, ``N/A`` (any case), empty or None."""
    return value is None or value.strip().lower() in UNKNOWN_TOKENS


def read_csv(path, image_column, encoding="utf-8"):
    """Read an attribute CSV.

    Args:
        path: str.
        image_column: str, the column that must be present.
        encoding: str, a Python codec name; UTF-8 (the default) accepts a BOM.

    Returns:
        (header: list of str, rows: list of ``(row_number, line_number,
        dict column -> str)``); row 1 is the first data row.

    Raises:
        ValueError: naming ``path`` for an empty file, a missing image column,
            duplicate header names, or a row with a different number of fields
            (naming the row); for bytes that are not valid in ``encoding``
            (naming the line and the ``encoding=`` option); for an unknown
            encoding.
    """
    encoding = check_encoding(encoding, "attributes_csv")
    try:
        return _read_csv(path, image_column, encoding)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e, "attributes_csv") from None


def _read_csv(path, image_column, encoding):
    with open(path, newline="", encoding=encoding) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"attributes_csv: {path} is empty (no header row)") from None
        dup = [h for h, n in collections.Counter(header).items() if n > 1]
        if dup:
            raise ValueError(f"attributes_csv: {path}: duplicate column(s) {dup}")
        if image_column not in header:
            raise ValueError(f"attributes_csv: {path} has no image column {image_column!r} "
                             f"(columns: {header}); pass image_column=")
        rows = []
        for fields in reader:
            if not fields or all(not x.strip() for x in fields):
                continue  # blank line
            if len(fields) != len(header):
                raise ValueError(f"attributes_csv: {path} row {len(rows) + 1} (line "
                                 f"{reader.line_num}) has {len(fields)} fields, the header "
                                 f"has {len(header)}")
            rows.append((len(rows) + 1, reader.line_num, dict(zip(header, fields))))
    return header, rows


def _sort_classes(values):
    try:
        return sorted(values, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(values)


def _hash_split(key, val_fraction, test_fraction):
    u = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 2 ** 32
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _check_image(path, verify):
    """None if the image looks readable, else the skip reason."""
    if not os.path.exists(path):
        return "missing file"
    if not os.path.isfile(path):
        return "not a file"
    if os.path.getsize(path) == 0:
        return "empty file"
    if verify:
        from PIL import Image
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many types on broken files
            return f"unreadable image: {type(e).__name__}: {e}"
    return None


def group_stats(labels, groups, classes):
    """Per-attribute class counts and unknown share of a label matrix.

    Args:
        labels: int8 ``[N, C]`` in {1, 0, -1}.
        groups: dict attribute -> list of column indices.
        classes: dict attribute -> list of class names (same order).

    Returns:
        dict attribute -> ``{"counts": {class: images}, "unknown": int,
        "unknown_share": float in [0, 1], "images": N}``.
    """
    labels = np.asarray(labels).reshape(-1, sum(len(c) for c in groups.values()))
    n = len(labels)
    out = {}
    for attr, cols in groups.items():
        sub = labels[:, cols]
        unknown = int(np.sum(np.all(sub < 0, axis=1))) if n else 0
        out[attr] = {
            "counts": {c: int(v) for c, v in zip(classes[attr], (sub == 1).sum(axis=0).tolist())},
            "unknown": unknown,
            "unknown_share": unknown / n if n else 0.0,
            "images": n,
        }
    return out


def oversample_records(records, groups, target, max_repeat=10, seed=0):
    """Append augmented copies of images of rare classes (see the module doc).

    Args:
        records: list of :class:`ImageRecord` (originals, ids without ``#aug``).
        groups: dict attribute -> list of column indices.
        target: int >= 1, wanted images per class.
        max_repeat: int >= 1, max appearances of one image (original + copies).
        seed: int.

    Returns:
        list: ``records`` followed by the copies (``"<id>#aug<k>"``, ``k >= 1``).
    """
    if not records:
        return list(records)
    labels = np.stack([r.labels for r in records])
    positive = (labels == 1).astype(np.int64)
    counts = positive.sum(axis=0)
    used = np.ones(len(records), np.int64)
    copies = []
    for a_i, cols in enumerate(groups.values()):
        for c_i, col in enumerate(cols):
            idx = np.nonzero(positive[:, col])[0]
            if counts[col] >= target or len(idx) == 0:
                continue
            order = np.random.default_rng([seed, a_i, c_i]).permutation(idx)
            while counts[col] < target:
                progressed = False
                for i in order:
                    if counts[col] >= target:
                        break
                    if used[i] >= max_repeat:
                        continue
                    copies.append((int(i), int(used[i])))
                    used[i] += 1
                    counts += positive[i]
                    progressed = True
                if not progressed:
                    break
    out = list(records)
    for i, k in copies:
        r = records[i]
        out.append(ImageRecord(f"{r.image_id}#aug{k}", f"{r.path}#aug{k}", r.labels.copy()))
    return out


@register_dataset("attributes_csv")
class AttributesCSV:
    """Adapter for per-image attribute CSVs (CSL's fashion-attribute setting).

    Args:
        root: str, folder with ``train/val/test.csv`` or ``attributes.csv``.
        image_column: str, column with the image path (default ``filename``).
        spec: None, dict, or path of a YAML/JSON ``{attribute: [classes]}``.
        image_dir: str or None, image folder (default ``<root>/images``);
            relative paths are taken from ``root``.
        val_fraction, test_fraction: floats >= 0 with sum < 1, single-file
            split shares (defaults 0.1, 0.2).
        oversample_to: int >= 1 or None, per-class target for the train split.
        max_repeat: int >= 1, max appearances of one train image (default 10).
        seed: int, oversampling permutation seed.
        verify_images: bool, open each image with PIL while scanning
            (unreadable -> skipped); default True.
        encoding: str, text encoding of the CSV files (default ``"utf-8"``,
            a BOM allowed; e.g. ``"latin-1"``, ``"cp1252"``).

    ``prepare()`` labels are int8 in {1, 0, -1}, columns ``"<attribute>=<class>"``.
    ``extra`` keys: ``root``, ``image_dir`` (absolute), ``image_column``,
    ``attribute_groups`` ({attribute: [column indices]}),
    ``attribute_classes`` ({attribute: [class names]}), ``spec`` (path or
    "inline" or None), ``split_source`` ("files" or "hash"), ``encoding``,
    ``ignored_columns``, ``label_counts_by_split``, ``unknown_counts_by_split``
    ({split: {attribute: images}}), ``oversampling`` (None, or
    ``{"oversample_to", "max_repeat", "seed", "copies", "before", "after",
    "note"}`` with before/after from :func:`group_stats`).

    Raises:
        FileNotFoundError: no CSV in ``root`` or a missing spec file (named).
        ValueError: bad options (an unknown ``encoding`` named); a bad CSV
            (file and row named), a CSV that is not valid text in
            ``encoding`` (file, line and the ``encoding=`` option named), a
            value that is not a class of the spec (file, row, attribute,
            value), a path outside ``image_dir`` (row and path), a duplicate
            image.
    """

    name = "attributes_csv"

    def __init__(self, root=DEFAULT_ROOT, image_column="filename", spec=None, image_dir=None,
                 val_fraction=0.1, test_fraction=0.2, oversample_to=None, max_repeat=10,
                 seed=0, verify_images=True, encoding="utf-8"):
        self.root = root
        self.encoding = encoding
        check_encoding(encoding, "attributes_csv")
        self.image_column = image_column
        self.spec = spec
        self.image_dir = image_dir
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.oversample_to = None if oversample_to is None else int(oversample_to)
        self.max_repeat = int(max_repeat)
        self.seed = int(seed)
        self.verify_images = bool(verify_images)
        if (self.val_fraction < 0 or self.test_fraction < 0
                or self.val_fraction + self.test_fraction >= 1):
            raise ValueError("attributes_csv: need val_fraction, test_fraction >= 0 with sum < 1")
        if self.oversample_to is not None and self.oversample_to < 1:
            raise ValueError("attributes_csv: oversample_to must be >= 1 or None")
        if self.max_repeat < 1:
            raise ValueError("attributes_csv: max_repeat must be >= 1")

    def _sources(self):
        """[(split or None, csv path)]; None = split by hash."""
        present = [(s, os.path.join(self.root, f)) for s, f in SPLIT_FILES.items()
                   if os.path.exists(os.path.join(self.root, f))]
        if present:
            return present, "files"
        single = os.path.join(self.root, SINGLE_FILE)
        if os.path.exists(single):
            return [(None, single)], "hash"
        raise FileNotFoundError(
            f"attributes_csv: no {', '.join(SPLIT_FILES.values())} or {SINGLE_FILE} in "
            f"{os.path.abspath(self.root)}")

    def prepare(self):
        """Read the CSV(s), resolve images, build labels; see the class doc."""
        root = os.path.abspath(self.root)
        image_dir = os.path.abspath(os.path.join(root, self.image_dir or "images"))
        image_dir_real = os.path.realpath(image_dir)
        sources, split_source = self._sources()
        tables = [(s, p) + read_csv(p, self.image_column, self.encoding) for s, p in sources]

        spec = load_spec(self.spec) if self.spec is not None else None
        all_columns = []
        for _, _, header, _ in tables:
            all_columns += [h for h in header if h != self.image_column and h not in all_columns]
        if spec is not None:
            for _, path, header, _ in tables:
                missing = [a for a in spec if a not in header]
                if missing:
                    raise ValueError(f"attributes_csv: {path} has no column for spec "
                                     f"attribute(s) {missing}")
            classes = spec
            ignored = [c for c in all_columns if c not in spec]
        else:
            for _, path, header, _ in tables:
                if header != tables[0][2]:
                    raise ValueError(f"attributes_csv: {path} has columns {header}, "
                                     f"{tables[0][1]} has {tables[0][2]}")
            values = {a: set() for a in all_columns}
            for _, _, _, rows in tables:
                for _, _, row in rows:
                    for a in all_columns:
                        if not is_unknown(row[a]):
                            values[a].add(row[a].strip())
            classes = {a: _sort_classes(v) for a, v in values.items()}
            ignored = []
        if not classes:
            raise ValueError(f"attributes_csv: {tables[0][1]} has no attribute column")

        groups, label_names, start = {}, [], 0
        for attr, names in classes.items():
            groups[attr] = list(range(start, start + len(names)))
            label_names += [f"{attr}={c}" for c in names]
            start += len(names)
        lookup = {a: ({c: i for i, c in enumerate(names)},
                      {c.lower(): i for i, c in reversed(list(enumerate(names)))})
                  for a, names in classes.items()}

        def class_index(attr, value, path, row_no, line):
            exact, lower = lookup[attr]
            v = value.strip()
            if v in exact:
                return exact[v]
            if v.lower() in lower:
                return lower[v.lower()]
            try:
                f = float(v)
                code = int(f) if f.is_integer() else None
            except ValueError:
                code = None
            if code is not None and 0 <= code < len(classes[attr]):
                return code
            raise ValueError(
                f"attributes_csv: {path} row {row_no} (line {line}): attribute {attr!r} has "
                f"value {value!r}, which is neither a class name nor a code in "
                f"[0, {len(classes[attr])}) of {classes[attr]}")

        splits = {"train": [], "val": [], "test": []}
        skipped = {"train": [], "val": [], "test": []}
        seen = {}
        for split, path, _, rows in tables:
            for row_no, line, row in rows:
                raw = row[self.image_column].strip()
                where = f"{path} row {row_no} (line {line})"
                if not raw:
                    raise ValueError(f"attributes_csv: {where}: empty {self.image_column!r}")
                full = os.path.realpath(os.path.join(image_dir_real, raw))
                if os.path.commonpath([full, image_dir_real]) != image_dir_real:
                    raise ValueError(f"attributes_csv: {where}: image path {raw!r} resolves to "
                                     f"{full}, outside the image folder {image_dir}")
                image_id = os.path.relpath(os.path.normpath(os.path.join(image_dir_real, raw)),
                                           image_dir_real).replace(os.sep, "/")
                if image_id in seen:
                    raise ValueError(f"attributes_csv: {where}: image {image_id!r} already "
                                     f"listed at {seen[image_id]}")
                seen[image_id] = where
                y = np.zeros(len(label_names), np.int8)
                for attr, cols in groups.items():
                    value = row[attr]
                    if is_unknown(value):
                        y[cols] = -1
                    else:
                        y[cols[class_index(attr, value, path, row_no, line)]] = 1
                s = split or _hash_split(image_id, self.val_fraction, self.test_fraction)
                reason = _check_image(full, self.verify_images)
                if reason is not None:
                    skipped[s].append({"image_id": image_id, "reason": reason})
                    continue
                splits[s].append(ImageRecord(image_id, full, y))

        oversampling = None
        if self.oversample_to is not None:
            before = group_stats(_matrix(splits["train"], len(label_names)), groups, classes)
            n0 = len(splits["train"])
            splits["train"] = oversample_records(splits["train"], groups, self.oversample_to,
                                                 self.max_repeat, self.seed)
            after = group_stats(_matrix(splits["train"], len(label_names)), groups, classes)
            oversampling = {
                "oversample_to": self.oversample_to, "max_repeat": self.max_repeat,
                "seed": self.seed, "copies": len(splits["train"]) - n0,
                "before": before, "after": after,
                "note": ("train only; a copy keeps all its labels, so rare classes of one "
                         "attribute ride with (common) classes of the others: 'after' is not "
                         "balanced everywhere"),
            }
        counts, unknown = {}, {}
        for s, recs in splits.items():
            m = _matrix(recs, len(label_names))
            counts[s] = {n: int(v) for n, v in zip(label_names, (m == 1).sum(axis=0).tolist())}
            unknown[s] = {a: st["unknown"] for a, st in group_stats(m, groups, classes).items()}
        extra = {
            "root": root,
            "image_dir": image_dir,
            "image_column": self.image_column,
            "attribute_groups": groups,
            "attribute_classes": {a: list(c) for a, c in classes.items()},
            "spec": (None if self.spec is None else
                     os.path.abspath(self.spec) if isinstance(self.spec, (str, os.PathLike))
                     else "inline"),
            "split_source": split_source,
            "encoding": self.encoding,
            "ignored_columns": ignored,
            "label_counts_by_split": counts,
            "unknown_counts_by_split": unknown,
            "oversampling": oversampling,
            "label_source": ("one-hot per attribute group; unknown attribute (#N/A, NA, N/A, "
                             "empty) -> -1 for the whole group"),
        }
        return PreparedDataset(
            name=self.name, label_names=label_names, splits=splits, skipped=skipped,
            load_image=load_with_augmentation, preprocessing=PREPROCESSING, extra=extra)


def _matrix(records, num_labels):
    if not records:
        return np.zeros((0, num_labels), np.int8)
    return np.stack([r.labels for r in records])


# --------------------------------------------------------------------------- reports

def class_distribution(prepared, split):
    """Class counts per attribute of one split.

    Args:
        prepared: :class:`PreparedDataset` from :class:`AttributesCSV`.
        split: "train", "val" or "test".

    Returns:
        pandas.DataFrame with columns ``attribute``, ``class``, ``count``
        (images), ``fraction_of_known`` (count / images with the attribute
        known; NaN on the unknown row and when nothing is known) and
        ``fraction_of_all`` (count / images of the split); one row per class
        in column order, then one ``class == "unknown"`` row per attribute.
        Oversampled copies in the train split are counted as images.

    Raises:
        KeyError: if ``split`` is not a split of ``prepared``.
    """
    import pandas as pd

    groups = prepared.extra["attribute_groups"]
    classes = prepared.extra["attribute_classes"]
    stats = group_stats(_matrix(prepared.splits[split], len(prepared.label_names)),
                        groups, classes)
    rows = []
    for attr, st in stats.items():
        n = st["images"]
        known = n - st["unknown"]
        for c, count in st["counts"].items():
            rows.append({"attribute": attr, "class": c, "count": count,
                         "fraction_of_known": count / known if known else float("nan"),
                         "fraction_of_all": count / n if n else float("nan")})
        rows.append({"attribute": attr, "class": UNKNOWN_ROW, "count": st["unknown"],
                     "fraction_of_known": float("nan"),
                     "fraction_of_all": st["unknown"] / n if n else float("nan")})
    return pd.DataFrame(rows, columns=["attribute", "class", "count", "fraction_of_known",
                                       "fraction_of_all"])


def format_distribution(df):
    """Plain-text table of a :func:`class_distribution` frame (fractions to 3 decimals)."""
    def frac(x):
        return "-" if x != x else f"{x:.3f}"
    return df.to_string(index=False, formatters={"fraction_of_known": frac,
                                                 "fraction_of_all": frac})


def plot_class_distribution(df, path, title=None):
    """Bar plot of a :func:`class_distribution` frame, one subplot per attribute.

    Uses matplotlib's Agg canvas directly (no global backend change). The
    unknown bar is grey.

    Args:
        df: pandas.DataFrame from :func:`class_distribution`.
        path: str, output file (format from the extension, e.g. ``.png``).
        title: optional str.

    Returns:
        str, ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attrs = list(dict.fromkeys(df["attribute"]))
    widest = max((int((df["attribute"] == a).sum()) for a in attrs), default=1)
    fig = Figure(figsize=(max(6.0, 0.55 * widest), 2.6 * max(len(attrs), 1)))
    FigureCanvasAgg(fig)
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(max(len(attrs), 1), 1, i + 1)
        sub = df[df["attribute"] == attr]
        names = [str(c) for c in sub["class"]]
        colors = ["#999999" if c == UNKNOWN_ROW else "#3573b9" for c in names]
        ax.bar(range(len(names)), sub["count"].to_numpy(), color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("images")
        ax.set_title(attr, fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path

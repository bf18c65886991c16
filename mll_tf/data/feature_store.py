"""Sharded, resumable TFRecord feature stores and their tf.data readers.

A *feature store* is one directory per (dataset, backbone, split), e.g.
``data/features/nus_wide/vgg19/train/``, holding

* ``manifest.json``: a :class:`Manifest` (identity of the extraction, label
  names, shard list, skipped images, ``complete`` flag);
* ``<split>-00000.tfrecord``, ``<split>-00001.tfrecord``, ...: ZLIB-compressed
  TFRecord shards of records in the :mod:`mll_tf.data.schema` layout;
* ``<split>-00000.ids.txt``, ...: the image ids of each shard, one per line,
  in record order (kept out of the manifest so it stays small).

Writing (:class:`FeatureStoreWriter`) is streaming and crash-safe: a shard is
written as ``*.tfrecord.tmp``, its ids sidecar is written, then the shard is
renamed and the manifest re-saved atomically. Re-opening the directory resumes:
the writer exposes :attr:`FeatureStoreWriter.done_ids` and the caller extracts
only the other images.

Reading (:func:`make_dataset`) is batch-then-parse: interleave the shards
-> (cache) -> (shuffle) -> (repeat) -> batch -> parse the whole batch ->
prefetch.
"""

import dataclasses
import datetime
import json
import os
import re
import warnings

import tensorflow as tf

from mll_tf.data import schema

MANIFEST_NAME = "manifest.json"
#: Graph-level seed of the per-pass shuffles (any fixed non-zero value).
_PASS_GRAPH_SEED = 87654321
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5,})\.tfrecord$")
_STORE_FILE_RE = re.compile(r"^.+-\d{5,}\.(tfrecord|ids\.txt)(?P<tmp>\.tmp)?$")
_RECORD_OVERHEAD = 16  # TFRecord framing: length (8) + 2 CRCs (4 + 4).
_ZLIB_BUFFER = 256 * 1024  # explicit zlib input/output buffer sizes (bytes).
# Upper bound on bytes written to the TF writer but not yet in the file:
# the zlib input and output buffers plus deflate's internal state.
_ZLIB_PENDING = 2 * _ZLIB_BUFFER + 256 * 1024

#: Manifest fields that must match for a writer to resume into a directory.
IDENTITY_FIELDS = ("dataset", "split", "backbone", "weights", "input_size", "preprocessing",
                   "feature_shape", "feature_dtype", "label_names", "extra_label_names",
                   "compression")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class IncompleteStoreError(RuntimeError):
    """Raised when reading a feature store whose extraction did not finish."""


@dataclasses.dataclass
class Manifest:
    """Metadata of one feature-store split, saved as ``<split_dir>/manifest.json``.

    Attributes:
        dataset: str, dataset name (e.g. ``"nus_wide"``).
        split: str, split name (e.g. ``"train"``); also the shard file prefix.
        backbone: str, backbone name (e.g. ``"vgg19"``).
        weights: str, weights identifier (e.g. ``"imagenet"`` or a file hash).
        input_size: list ``[H, W]`` of ints, network input size in pixels.
        preprocessing: str, description of the image preprocessing.
        feature_shape: list ``[R, D]`` of ints, regions x channels per record.
        feature_grid: optional list ``[h, w]`` with ``h * w == R``, the spatial
            grid the regions were flattened from (row-major).
        feature_dtype: str, storage dtype, ``"float16"`` or ``"float32"``.
        label_names: list of str, the ``C`` names of ``labels`` in order.
        extra_label_names: dict ``name -> list of str`` for each extra label
            set ``labels/<name>``.
        num_examples: int, records in complete shards.
        shards: list of dicts ``{"file", "num_examples", "num_bytes"}``; the
            file name is relative to the split directory; bytes on disk.
        skipped: list of dicts ``{"image_id", "reason"}`` for images not
            stored (unreadable, no labels, ...).
        compression: str, TFRecord compression, ``"ZLIB"`` (or ``""`` for
            none; used by benchmarks).
        compression_level: int or None, zlib level of the last writer.
        complete: bool, True only after :meth:`FeatureStoreWriter.close`.
        created: str, ISO-8601 UTC time of the first save.
        updated: str, ISO-8601 UTC time of the last save.
        extra: dict, free JSON metadata for the dataset adapter (e.g. the tag
            vocabulary threshold).
    """

    dataset: str
    split: str
    backbone: str = ""
    weights: str = ""
    input_size: list = dataclasses.field(default_factory=list)
    preprocessing: str = ""
    feature_shape: list = dataclasses.field(default_factory=list)
    feature_grid: list = None
    feature_dtype: str = "float16"
    label_names: list = dataclasses.field(default_factory=list)
    extra_label_names: dict = dataclasses.field(default_factory=dict)
    num_examples: int = 0
    shards: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    compression: str = "ZLIB"
    compression_level: int = 1
    complete: bool = False
    created: str = ""
    updated: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # Normalise JSON-unfriendly types so identity comparisons are exact.
        self.input_size = [int(v) for v in (self.input_size or [])]
        self.feature_shape = [int(v) for v in (self.feature_shape or [])]
        if self.feature_grid is not None:
            self.feature_grid = [int(v) for v in self.feature_grid]
        self.label_names = [str(v) for v in self.label_names]
        self.extra_label_names = {str(k): [str(v) for v in vs]
                                  for k, vs in (self.extra_label_names or {}).items()}
        self.compression = self.compression or ""
        if not isinstance(self.split, str) or not self.split or "/" in self.split:
            raise ValueError(f"Manifest.split must be a non-empty name without '/', "
                             f"got {self.split!r}")

    def feature_spec(self):
        """The :class:`~mll_tf.data.schema.FeatureSpec` of this split's records.

        Raises:
            ValueError: if ``feature_shape``/``feature_dtype`` are invalid, or
                ``feature_grid`` does not multiply to ``R``.
        """
        if self.feature_grid is not None and len(self.feature_shape) == 2:
            if len(self.feature_grid) != 2 or (
                    self.feature_grid[0] * self.feature_grid[1] != self.feature_shape[0]):
                raise ValueError(f"Manifest.feature_grid {self.feature_grid} does not match "
                                 f"feature_shape {self.feature_shape} (h * w must equal R)")
        return schema.FeatureSpec(
            feature_shape=tuple(self.feature_shape),
            feature_dtype=self.feature_dtype,
            num_labels=len(self.label_names),
            extra_labels={k: len(v) for k, v in self.extra_label_names.items()})

    def to_dict(self):
        """JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Build from :meth:`to_dict` output; unknown keys raise ``TypeError``."""
        return cls(**d)

    @classmethod
    def load(cls, split_dir):
        """Load ``<split_dir>/manifest.json``.

        Raises:
            FileNotFoundError: naming the path, if the directory or manifest is
                missing.
            ValueError: naming the path, if the manifest is not valid JSON or
                does not describe a Manifest.
        """
        path = os.path.join(os.fspath(split_dir), MANIFEST_NAME)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"feature store directory {os.fspath(split_dir)!r} "
                                    f"does not exist")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature store manifest {path!r} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise TypeError("top-level JSON value is not an object")
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"feature store manifest {path!r} is corrupt: {e}") from e

    def save(self, split_dir):
        """Atomically write ``<split_dir>/manifest.json`` (temp file + ``os.replace``).

        Sets ``created`` (first save) and ``updated``.
        """
        split_dir = os.fspath(split_dir)
        os.makedirs(split_dir, exist_ok=True)
        now = _now()
        if not self.created:
            self.created = now
        self.updated = now
        path = os.path.join(split_dir, MANIFEST_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def read_manifest(split_dir):
    """Load the manifest of a feature-store split; see :meth:`Manifest.load`."""
    return Manifest.load(split_dir)


def _ids_path(shard_path):
    return shard_path[:-len(".tfrecord")] + ".ids.txt"


def _read_ids(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _count_records(path, compression):
    n = 0
    for _ in tf.data.TFRecordDataset(path, compression_type=compression or None):
        n += 1
    return n


def _fsync_path(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class FeatureStoreWriter:
    """Streams examples into sharded ZLIB TFRecords; resumable after a crash.

    Use as a context manager::

        with FeatureStoreWriter(split_dir, manifest) as w:
            for image_id in ids:
                if image_id in w.done_ids:
                    continue
                w.write(image_id, fmap, labels)   # fmap [R, D], labels [C]
        manifest = w.manifest                     # complete=True

    Layout and crash safety: records go to ``<split>-NNNNN.tfrecord.tmp``.
    When the shard's estimated size would exceed ``max_shard_bytes`` (or on
    :meth:`close`), the TF writer is closed, the ids are written to
    ``<split>-NNNNN.ids.txt``, the shard is renamed to ``.tfrecord`` and the
    manifest is re-saved with ``complete=False`` (including the skipped list
    so far). After a crash the records of the unfinished shard are lost and
    re-extracted; everything in complete shards is kept.

    Resume: if ``<split_dir>/manifest.json`` exists (and not ``overwrite``),
    its identity fields (:data:`IDENTITY_FIELDS`) must match ``manifest``.
    Leftover ``*.tmp`` files are deleted. Complete shards that the manifest
    does not list (crash between rename and manifest save) are adopted if
    their ids sidecar exists and its line count equals the shard's record
    count and none of their ids are already stored; otherwise they are
    deleted (their images are then not in :attr:`done_ids` and get
    re-extracted). Either way no id is duplicated or lost. A listed shard whose
    file is missing is dropped with a warning (its images get re-extracted).
    The free ``extra`` metadata of ``manifest`` replaces the stored one.

    Shard size: the estimate is bytes on disk plus the uncompressed size of
    records not yet flushed by zlib, so complete shards stay within
    ``max_shard_bytes`` (a single record larger than the bound gets a shard of
    its own). With well-compressing features, shards end close to the bound.

    Not safe for two writers on the same directory at once.

    Args:
        split_dir: str or path-like, the split directory (created if needed).
        manifest: :class:`Manifest` describing the extraction; its ``shards``,
            ``skipped``, ``num_examples`` and ``complete`` are managed here.
        max_shard_bytes: int, size bound of a shard on disk in bytes
            (default 64 MiB).
        compression_level: int in [0, 9] or None (zlib default, 6); 1 is ~5x
            faster to write than 6 at ~4 points worse compression.
        overwrite: bool; if True, delete the directory's manifest, shards,
            sidecars and temp files first.

    Attributes:
        manifest: the :class:`Manifest` being written.
        done_ids: set of str, ids stored in complete shards or skipped
            (including those written or skipped by this writer).

    Raises:
        ValueError: if the existing manifest's identity fields differ (naming
            the field), or if a listed shard's size on disk differs from the
            manifest (corruption).
    """

    def __init__(self, split_dir, manifest, max_shard_bytes=64 * 2**20, compression_level=1,
                 overwrite=False):
        self.split_dir = os.fspath(split_dir)
        self.max_shard_bytes = int(max_shard_bytes)
        if self.max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        if compression_level is not None and not 0 <= int(compression_level) <= 9:
            raise ValueError(f"compression_level must be in [0, 9] or None, "
                             f"got {compression_level}")
        self.compression_level = compression_level
        self.overwrite = overwrite
        self.spec = manifest.feature_spec()  # validates shape/dtype early
        os.makedirs(self.split_dir, exist_ok=True)
        if overwrite:
            self._wipe()
        manifest_path = os.path.join(self.split_dir, MANIFEST_NAME)
        if os.path.exists(manifest_path):
            manifest = self._resume(Manifest.load(self.split_dir), manifest)
        else:
            leftovers = self._store_files()
            if leftovers:
                raise ValueError(
                    f"feature store directory {self.split_dir!r} has no {MANIFEST_NAME} but "
                    f"holds shard files (e.g. {os.path.basename(leftovers[0])!r}); use a new "
                    f"directory or overwrite=True to delete them.")
            manifest = dataclasses.replace(manifest, shards=[], skipped=[], num_examples=0,
                                           complete=False, created="", updated="")
            self.done_ids = set()
        manifest.compression_level = compression_level
        manifest.complete = False
        self.manifest = manifest
        self._next_index = 1 + max(
            [int(_SHARD_RE.match(s["file"]).group("index")) for s in manifest.shards] or [-1])
        self._writer = None
        self._closed = False
        manifest.save(self.split_dir)

    # ----------------------------------------------------------------- resume
    def _store_files(self, tmp=None):
        """Paths of shard/sidecar files (any split prefix) in the directory.

        ``tmp``: None for all, True for ``*.tmp`` ones only, False for final ones.
        """
        out = []
        for name in sorted(os.listdir(self.split_dir)):
            m = _STORE_FILE_RE.match(name)
            if m and (tmp is None or bool(m.group("tmp")) == tmp):
                out.append(os.path.join(self.split_dir, name))
        return out

    def _wipe(self):
        for path in self._store_files():
            os.remove(path)
        for name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp"):
            if os.path.exists(os.path.join(self.split_dir, name)):
                os.remove(os.path.join(self.split_dir, name))

    def _delete_strays(self, keep):
        """Delete temp files, and shards/sidecars not in ``keep`` (basenames)."""
        for path in self._store_files():
            name = os.path.basename(path)
            base = name[:-len(".ids.txt")] + ".tfrecord" if name.endswith(".ids.txt") else name
            if name.endswith(".tmp") or base not in keep:
                os.remove(path)

    def _resume(self, old, new):
        for field in IDENTITY_FIELDS:
            a, b = getattr(old, field), getattr(new, field)
            if a != b:
                raise ValueError(
                    f"cannot resume feature store {self.split_dir!r}: manifest field "
                    f"'{field}' differs (stored {a!r}, requested {b!r}). Use a new directory "
                    f"or overwrite=True to start again.")
        for path in self._store_files(tmp=True):
            os.remove(path)
        done = set()
        shards = []
        for shard in old.shards:
            path = os.path.join(self.split_dir, shard["file"])
            ids_file = _ids_path(path)
            if not os.path.isfile(path) or not os.path.isfile(ids_file):
                warnings.warn(f"feature store {self.split_dir!r}: shard {shard['file']} listed "
                              f"in the manifest is missing (or its ids file is); its "
                              f"{shard['num_examples']} images will be extracted again")
                continue
            size = os.path.getsize(path)
            if size != shard["num_bytes"]:
                raise ValueError(
                    f"feature store {self.split_dir!r}: shard {shard['file']} has {size} bytes, "
                    f"the manifest says {shard['num_bytes']}; the store is corrupt. Use a new "
                    f"directory or overwrite=True.")
            ids = _read_ids(ids_file)
            if len(ids) != shard["num_examples"]:
                raise ValueError(
                    f"feature store {self.split_dir!r}: {os.path.basename(ids_file)} lists "
                    f"{len(ids)} ids, the manifest says {shard['num_examples']}; the store is "
                    f"corrupt. Use a new directory or overwrite=True.")
            done.update(ids)
            shards.append(shard)
        # Orphans: complete shards renamed but not yet recorded in the manifest.
        listed = {s["file"] for s in shards}
        for path in self._store_files(tmp=False):
            name = os.path.basename(path)
            m = _SHARD_RE.match(name)
            if name in listed or m is None or m.group("split") != old.split:
                continue
            ids_file = _ids_path(path)
            adopt = False
            if os.path.isfile(ids_file):
                ids = _read_ids(ids_file)
                try:
                    n = _count_records(path, old.compression)
                except tf.errors.OpError:
                    n = -1
                adopt = (n == len(ids) and len(set(ids)) == len(ids)
                         and not done.intersection(ids))
            if adopt:
                done.update(ids)
                shards.append({"file": name, "num_examples": len(ids),
                               "num_bytes": os.path.getsize(path)})
                listed.add(name)
        self._delete_strays(keep=listed)
        shards.sort(key=lambda s: s["file"])
        skipped = [s for s in old.skipped if s["image_id"] not in done]
        done.update(s["image_id"] for s in skipped)
        self.done_ids = done
        return dataclasses.replace(
            new, shards=shards, skipped=skipped,
            num_examples=sum(s["num_examples"] for s in shards),
            created=old.created, updated=old.updated)

    # ----------------------------------------------------------------- writing
    def _open_shard(self):
        name = f"{self.manifest.split}-{self._next_index:05d}.tfrecord"
        self._next_index += 1
        self._shard_name = name
        self._tmp_path = os.path.join(self.split_dir, name + ".tmp")
        options = tf.io.TFRecordOptions(
            compression_type=self.manifest.compression or None,
            compression_level=self.compression_level if self.manifest.compression else None,
            input_buffer_size=_ZLIB_BUFFER if self.manifest.compression else None,
            output_buffer_size=_ZLIB_BUFFER if self.manifest.compression else None)
        self._writer = tf.io.TFRecordWriter(self._tmp_path, options=options)
        self._shard_ids = []
        self._raw_total = 0  # uncompressed bytes written to this shard
        self._raw_pending = 0  # uncompressed bytes since the file size last grew
        self._disk = 0

    def _estimate(self, extra):
        pending = min(self._raw_total, self._raw_pending + _ZLIB_PENDING) + extra
        if self.manifest.compression:
            pending += pending // 1000 + 64  # zlib worst-case expansion and trailer
        return self._disk + pending

    def _finish_shard(self):
        """Close the current shard, write its ids, rename it, save the manifest."""
        writer, self._writer = self._writer, None
        writer.close()
        _fsync_path(self._tmp_path)
        final = os.path.join(self.split_dir, self._shard_name)
        ids_file = _ids_path(final)
        with open(ids_file + ".tmp", "w", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in self._shard_ids))
            f.flush()
            os.fsync(f.fileno())
        os.replace(ids_file + ".tmp", ids_file)
        os.replace(self._tmp_path, final)
        size = os.path.getsize(final)
        if size > self.max_shard_bytes and len(self._shard_ids) > 1:
            warnings.warn(f"shard {final} has {size} bytes, above max_shard_bytes="
                          f"{self.max_shard_bytes}")
        self.manifest.shards.append({"file": self._shard_name,
                                     "num_examples": len(self._shard_ids),
                                     "num_bytes": size})
        self.manifest.num_examples += len(self._shard_ids)
        self.manifest.save(self.split_dir)

    def _abandon_shard(self):
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - best effort, the original error wins
            pass
        if os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)

    def _check_open(self):
        if self._closed:
            raise ValueError(f"FeatureStoreWriter for {self.split_dir!r} is closed")

    def _check_id(self, image_id):
        if not isinstance(image_id, str) or not image_id:
            raise ValueError(f"image_id must be a non-empty str, got {image_id!r}")
        if "\n" in image_id or "\r" in image_id:
            raise ValueError(f"image_id {image_id!r} contains a line break")
        if image_id in self.done_ids:
            raise ValueError(f"image_id {image_id!r} is already in feature store "
                             f"{self.split_dir!r} (written or skipped); skip ids in done_ids")

    def write(self, image_id, feature, labels, extra_labels=None):
        """Validate, serialize and append one example.

        Args:
            image_id: str, unique within the split, without line breaks.
            feature: array-like ``[R, D]`` matching ``manifest.feature_shape``.
            labels: array-like ``[C]`` in {1, 0, -1}, ``C = len(label_names)``.
            extra_labels: dict ``name -> [C_name]`` with exactly the names of
                ``manifest.extra_label_names``.

        Raises:
            ValueError: if the id was already written or skipped, or (naming
                the id and field) the example does not match the manifest.
        """
        self._check_open()
        self._check_id(image_id)
        record = schema.serialize_example(image_id, feature, labels, extra_labels,
                                          spec=self.spec)
        size = len(record) + _RECORD_OVERHEAD
        if self._writer is not None and self._shard_ids and \
                self._estimate(size) > self.max_shard_bytes:
            self._finish_shard()
        if self._writer is None:
            self._open_shard()
        self._writer.write(record)
        self._shard_ids.append(image_id)
        self.done_ids.add(image_id)
        self._raw_total += size
        self._raw_pending += size
        if self.manifest.compression:
            disk = os.path.getsize(self._tmp_path)
            if disk != self._disk:
                self._disk, self._raw_pending = disk, 0
        else:
            self._disk, self._raw_pending = self._raw_total, 0

    def skip(self, image_id, reason):
        """Record that ``image_id`` is deliberately not stored.

        The entry is saved with the next manifest save (shard completion,
        close, or an exception in the ``with`` block).

        Raises:
            ValueError: if the id was already written or skipped.
        """
        self._check_open()
        self._check_id(image_id)
        self.manifest.skipped.append({"image_id": image_id, "reason": str(reason)})
        self.done_ids.add(image_id)

    def close(self):
        """Finish the last shard and save the manifest with ``complete=True``.

        Returns:
            The final :class:`Manifest`. Calling ``close`` again returns it.
        """
        if self._closed:
            return self.manifest
        if self._writer is not None:
            self._finish_shard()
        self.manifest.complete = True
        self.manifest.save(self.split_dir)
        self._closed = True
        return self.manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return False
        if self._closed:
            return False
        # Keep what was written: the current shard's records are valid.
        try:
            if self._writer is not None:
                self._finish_shard()
        except Exception:  # noqa: BLE001 - e.g. disk full; drop the partial shard
            if self._writer is not None:
                self._abandon_shard()
        self._closed = True
        try:
            self.manifest.complete = False
            self.manifest.save(self.split_dir)
        except Exception:  # noqa: BLE001 - never mask the original exception
            pass
        return False


def make_dataset(split_dir, batch_size, *, shuffle=False, shuffle_buffer=4096, seed=None,
                 cache=False, repeat=False, drop_remainder=False, as_dict=False,
                 require_complete=True, start_example=0):
    """Build the tf.data input pipeline of a feature-store split.

    Pipeline: shard files from the manifest -> (shuffle the files) ->
    ``interleave(TFRecordDataset)`` with ``cycle_length = min(#shards,
    max(4, cpu_count))``, deterministic -> (``cache()`` of the serialized
    records, in memory) -> (``shuffle(shuffle_buffer)``) -> (repeated) ->
    (skip ``start_example`` records) -> ``batch`` -> ``map(parse_examples)`` on
    whole batches -> ``prefetch(AUTOTUNE)``.

    The order is a pure function of ``seed``: pass ``e`` over the split
    (``e = 0, 1, ...``) shuffles the shards and the records with a seed made
    of ``seed`` and ``e``, so a stream resumed at record ``n``
    (``start_example=n``) continues exactly where an uninterrupted one would
    be, and only the records of the current pass before ``n`` are read and
    dropped (with ``cache=True``, the cached passes are skipped in memory).
    With ``shuffle=False`` every pass is in the same deterministic order
    (round-robin over the first ``cycle_length`` shards, in shard order), not
    the write order when there are several shards; use ``as_dict=True`` to
    get the image ids alongside.

    Memory: the shuffle buffer holds ``shuffle_buffer`` *uncompressed*
    serialized records (e.g. 4096 x 196 x 512 float16 ~ 0.8 GB); ``cache=True``
    holds the whole split uncompressed.

    Args:
        split_dir: str or path-like, the split directory.
        batch_size: int, examples per batch.
        shuffle: bool, shuffle the shard order and the records.
        shuffle_buffer: int, record shuffle buffer size.
        seed: optional int, seed of both shuffles (None: 0).
        cache: bool, cache the serialized records in memory after the first
            pass (never cached unless asked).
        repeat: bool, repeat indefinitely.
        drop_remainder: bool, drop the last partial batch.
        as_dict: bool, yield the full dict of
            :func:`~mll_tf.data.schema.parse_examples` instead of a tuple.
        require_complete: bool, refuse a store whose extraction was
            interrupted.
        start_example: int >= 0, records of the (repeated) stream to skip
            before the first batch (a resumed run: steps done x batch size).

    Returns:
        ``tf.data.Dataset`` of ``(features float32 [B, R, D], labels int8
        [B, C])``, or with ``as_dict`` of dicts with ``"image_id"`` tf.string
        ``[B]``, ``"features"``, ``"labels"`` and ``"labels/<name>"`` int8
        ``[B, C_name]``.

    Raises:
        FileNotFoundError: naming the path, if the split directory, its
            manifest, or a listed shard is missing.
        ValueError: if the manifest is corrupt, ``batch_size < 1`` or
            ``start_example < 0``.
        IncompleteStoreError: (a RuntimeError) if the manifest is not complete
            and ``require_complete``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(start_example) < 0:
        raise ValueError(f"start_example must be >= 0, got {start_example}")
    split_dir = os.fspath(split_dir)
    manifest = read_manifest(split_dir)
    if require_complete and not manifest.complete:
        raise IncompleteStoreError(
            f"feature store {split_dir!r} is incomplete: the extraction was interrupted "
            f"({manifest.num_examples} examples in {len(manifest.shards)} complete shards). "
            f"Re-running the extraction command resumes it; pass require_complete=False to "
            f"read the complete shards anyway.")
    spec = manifest.feature_spec()
    files = [os.path.join(split_dir, s["file"]) for s in manifest.shards]
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature store shard {path!r} listed in "
                                    f"{os.path.join(split_dir, MANIFEST_NAME)!r} is missing")
    compression = manifest.compression or None
    autotune = tf.data.AUTOTUNE
    cycle = max(1, min(len(files), max(4, os.cpu_count() or 1)))
    seed = 0 if seed is None else int(seed)
    n = int(manifest.num_examples)
    start = int(start_example)

    def read_shard(path):
        return tf.data.TFRecordDataset(path, compression_type=compression)

    def one_pass(epoch):
        """The records of pass ``epoch`` (a tf.int64 scalar), shuffled with (seed, epoch)."""
        # A fixed graph-level seed for this traced function: the order then depends on
        # (seed, epoch) only, not on the process's global seed.
        tf.random.set_seed(_PASS_GRAPH_SEED)
        pass_seed = seed * 1_000_003 + epoch
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string))
        if shuffle and len(files) > 1:
            ds = ds.shuffle(len(files), seed=pass_seed)
        ds = ds.interleave(read_shard, cycle_length=cycle, block_length=1,
                           num_parallel_calls=autotune, deterministic=True)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=pass_seed)
        return ds

    if cache:
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string)).interleave(
            read_shard, cycle_length=cycle, block_length=1, num_parallel_calls=autotune,
            deterministic=True).cache()
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        if start:
            ds = ds.skip(start)
    elif repeat:
        first_pass, offset = divmod(start, max(n, 1))
        ds = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass)
        if offset:
            ds = ds.skip(offset)
    else:
        ds = one_pass(tf.constant(0, tf.int64))
        if start:
            ds = ds.skip(start)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)

    def parse(serialized):
        out = schema.parse_examples(serialized, spec)
        if as_dict:
            return out
        return out[schema.FEATURES_OUTPUT_KEY], out[schema.LABELS_KEY]

    ds = ds.map(parse, num_parallel_calls=autotune)
    return ds.prefetch(autotune)


class MissingFeaturesError(FileNotFoundError):
    """A split's feature store does not exist; the message holds the command that makes it."""

"""Sharded, resumable TFRecord feature stores and their tf.data readers.

A *feature store* is one directory per (dataset, backbone, split), e.g.
``data/features/nus_wide/vgg19/train/``, holding

* ``manifest.json``: a :class:`Manifest` (identity of the extraction, label
  names, shard list, skipped images, ``complete`` flag);
* ``<split>-00000.tfrecord``, ``<split>-00001.tfrecord``, ...: ZLIB-compressed
  TFRecord shards of records in the :mod:`mll_tf.data.schema` layout;
* ``<split>-00000.ids.txt``, ...: the image ids of each shard, one per line,
  in record order (kept out of the manifest so it stays small);
* ``writer.lock`` while a writer is open (pid and host of its process).

``split_dir`` may be any ``tf.io.gfile`` path (``gs://``, ``hdfs://``, ``ram://``,
...): every file access goes through :mod:`mll_tf.data.fs` (local paths behave
as with ``os``); see there for what differs on object stores (no atomic
create for the lock, renames that are copies).

Writing (:class:`FeatureStoreWriter`) is streaming and crash-safe: a shard is
written as ``*.tfrecord.tmp``, its ids sidecar is written, then the shard is
renamed and the manifest re-saved atomically. Re-opening the directory resumes:
the writer exposes :attr:`FeatureStoreWriter.done_ids` and the caller extracts
only the other images. The manifest's identity (:data:`IDENTITY_FIELDS`, which
include the adapter options and a digest of every source record's id and
labels, :func:`records_digest`) must match for a writer to resume. One writer
per split at a time (a lock file).

Reading (:func:`make_dataset`) is batch-then-parse: interleave the shards
-> (cache) -> (shuffle) -> (repeat) -> batch -> parse the whole batch ->
prefetch. A shard that cannot be read to its end, a record whose shape
differs from the manifest's and a non-finite feature stop reading with an
error naming the store and the shard or image. :func:`verify_store` checks a
whole split.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
import warnings

import numpy as np
import tensorflow as tf

from mll_tf.data import fs, schema

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

#: Manifest fields that must match for a writer to resume into a directory. A value of
#: None (a store written before the field existed, or a caller that does not know it) is
#: unknown and not compared.
IDENTITY_FIELDS = ("dataset", "split", "backbone", "weights", "input_size", "preprocessing",
                   "feature_shape", "feature_dtype", "label_names", "extra_label_names",
                   "compression", "adapter_options", "records_sha256")
#: Identity fields added later: a store without them is accepted, with one note.
_LATER_IDENTITY_FIELDS = ("adapter_options", "records_sha256")
#: Name of the writer's lock file in a split directory.
LOCK_NAME = "writer.lock"
#: How long an empty lock file may be in the middle of being written by its creator.
_LOCK_FILL_SECONDS = 5.0
#: Stored records whose labels are compared when the records digest differs.
_DIFF_SCAN_LIMIT = 100_000
#: Prefix of the readers' early-end-of-shard marker (a serialized Example never starts
#: with a zero byte: protobuf field number 0 does not exist).
_END_OF_SHARD = b"\x00mll_tf: end of shard\x00"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class IncompleteStoreError(RuntimeError):
    """Raised when reading a feature store whose extraction did not finish."""


class StoreMismatchError(ValueError):
    """A writer may not resume into a store made by another extraction.

    Attributes:
        split_dir: str, the store.
        fields: list of str, the identity fields that differ.
        detail: str, what differs (the message without the advice on what to do).
    """

    def __init__(self, split_dir, fields, detail, advice):
        self.split_dir, self.fields, self.detail = split_dir, list(fields), detail
        super().__init__(f"cannot resume feature store {split_dir!r}: {detail}. {advice}")


class StoreLockedError(ValueError):
    """Another live process is writing the same feature-store split.

    Attributes:
        split_dir: str, the store.
        holder: dict, the lock file's content (``pid``, ``host``, ...).
    """

    def __init__(self, split_dir, holder, message):
        self.split_dir, self.holder = split_dir, holder
        super().__init__(message)


def _label_bytes(labels):
    return np.asarray(labels).astype(np.int8).tobytes()


def records_digest(records):
    """Digest of the source records of a split: which images, with which labels.

    SHA-256 over the records sorted by image id, each contributing
    ``image_id (UTF-8) + b"\\0" + labels (int8 bytes) + b"\\n"``. The order of
    ``records`` does not matter; any change of an id or a label changes it.

    Args:
        records: iterable of objects with ``image_id`` (str) and ``labels``
            (array-like ``[C]`` in {1, 0, -1}), e.g.
            :class:`mll_tf.data.adapter.ImageRecord`, or of ``(image_id,
            labels)`` pairs.

    Returns:
        ``(hexdigest, count)``: str of 64 hex digits and the number of records.
    """
    pairs = [(r[0], r[1]) if isinstance(r, tuple) else (r.image_id, r.labels) for r in records]
    pairs.sort(key=lambda p: p[0])
    h = hashlib.sha256()
    for image_id, labels in pairs:
        h.update(image_id.encode("utf-8") + b"\0" + _label_bytes(labels) + b"\n")
    return h.hexdigest(), len(pairs)


def _json_scalar(v):
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


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
        adapter_options: dict or None, the keyword arguments the dataset
            adapter was built with (``--dataset-options``, ``--data-root`` as
            ``root``, ...; values str/int/float/bool). None: unknown (a store
            written before this field existed).
        records_sha256: str or None, :func:`records_digest` of the adapter's
            records of this split (all of them, whatever was extracted). None:
            unknown.
        records_count: int or None, how many records that digest covers.
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
    adapter_options: dict = None
    records_sha256: str = None
    records_count: int = None

    def __post_init__(self):
        # Normalise JSON-unfriendly types so identity comparisons are exact.
        if self.adapter_options is not None:
            self.adapter_options = {str(k): _json_scalar(v)
                                    for k, v in dict(self.adapter_options).items()}
        if self.records_count is not None:
            self.records_count = int(self.records_count)
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
        if not fs.isdir(split_dir):
            raise FileNotFoundError(f"feature store directory {os.fspath(split_dir)!r} "
                                    f"does not exist")
        if not fs.isfile(path):
            from mll_tf.data.sharding import part_dirs

            parts = part_dirs(split_dir)
            if parts:
                raise FileNotFoundError(
                    f"feature store manifest {path!r} does not exist: {os.fspath(split_dir)!r} holds the parts "
                    f"of a sharded extraction ({', '.join(p[2] for p in parts[:3])}"
                    f"{', ...' if len(parts) > 3 else ''}) that was not finalized; once every worker is done, "
                    f"run its extraction command with --num-workers {parts[0][1]} --finalize")
            raise FileNotFoundError(f"feature store manifest {path!r} does not exist")
        try:
            data = json.loads(fs.read_text(path))
            if not isinstance(data, dict):
                raise TypeError("top-level JSON value is not an object")
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"feature store manifest {path!r} is corrupt: {e}") from e

    def save(self, split_dir):
        """Atomically write ``<split_dir>/manifest.json`` (temp file + rename, :func:`mll_tf.data.fs.rename`).

        Sets ``created`` (first save) and ``updated``.
        """
        split_dir = os.fspath(split_dir)
        fs.makedirs(split_dir)
        now = _now()
        if not self.created:
            self.created = now
        self.updated = now
        path = os.path.join(split_dir, MANIFEST_NAME)
        fs.write_text_atomic(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")


def read_manifest(split_dir):
    """Load the manifest of a feature-store split; see :meth:`Manifest.load`."""
    return Manifest.load(split_dir)


def _ids_path(shard_path):
    return shard_path[:-len(".tfrecord")] + ".ids.txt"


def _read_ids(path):
    return fs.read_text(path).splitlines()


def _count_records(path, compression):
    n = 0
    for _ in tf.data.TFRecordDataset(path, compression_type=compression or None):
        n += 1
    return n


def _fsync_path(path):
    fs.fsync_path(path)


_RESUME_ADVICE = "Use a new directory or overwrite=True to start again."


def _fmt_options(d):
    return "{" + ", ".join(f"{k}={d[k]!r}" for k in sorted(d)) + "}" if d else "{}"


def _stored_ids(split_dir, manifest):
    """Image ids of the listed shards, from their ids files (missing files are left out)."""
    ids = []
    for shard in manifest.shards:
        path = _ids_path(os.path.join(split_dir, shard["file"]))
        if fs.isfile(path):
            ids += _read_ids(path)
    return ids


def _describe_record_changes(split_dir, stored, records):
    """What differs between the stored records and ``records`` (one phrase, for an error)."""
    new = {}
    for r in records:
        image_id, labels = (r[0], r[1]) if isinstance(r, tuple) else (r.image_id, r.labels)
        new[image_id] = _label_bytes(labels)
    stored_ids = _stored_ids(split_dir, stored)
    gone = [i for i in stored_ids if i not in new]
    # Labels: read image_id and labels of the stored records (up to _DIFF_SCAN_LIMIT).
    changed, scanned = [], 0
    spec = {schema.IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
            schema.LABELS_KEY: tf.io.FixedLenFeature([], tf.string)}
    try:
        for shard in stored.shards:
            if scanned >= _DIFF_SCAN_LIMIT:
                break
            path = os.path.join(split_dir, shard["file"])
            if not fs.isfile(path):
                continue
            ds = tf.data.TFRecordDataset(path, compression_type=stored.compression or None)
            for batch in ds.batch(1024).map(lambda s_: tf.io.parse_example(s_, spec)):
                for image_id, labels in zip(batch[schema.IMAGE_ID_KEY].numpy(),
                                            batch[schema.LABELS_KEY].numpy()):
                    scanned += 1
                    image_id = image_id.decode("utf-8")
                    if image_id in new and new[image_id] != labels:
                        changed.append(image_id)
    except tf.errors.OpError:
        pass  # a damaged shard: report what was compared
    differ = len(set(gone) | set(changed))
    n = len(stored_ids)
    if differ:
        example, why = ((changed[0], "labels changed") if changed else
                        (gone[0], "no longer in the split"))
        partial = (f", labels compared for the first {scanned}" if scanned < n else "")
        return (f"{differ} of {n} stored records differ ({len(changed)} with other labels, "
                f"{len(gone)} no longer in the split{partial}; e.g. {example!r}: {why})")
    if stored.records_count is not None and stored.records_count != len(new):
        return (f"the split now has {len(new)} images, it had {stored.records_count} when the "
                f"store was extracted (its {n} stored records are unchanged)")
    return (f"its {n} stored records are unchanged; images not stored (skipped or not yet "
            f"extracted) changed")


def check_identity(split_dir, stored, requested, records=None, advice=_RESUME_ADVICE):
    """Check that a writer for ``requested`` may resume the store ``stored``.

    Every field of :data:`IDENTITY_FIELDS` must be equal; a field that is
    None on either side is unknown and not compared.

    Args:
        split_dir: str, the store (named in messages).
        stored: :class:`Manifest` on disk.
        requested: :class:`Manifest` of the new extraction.
        records: optional iterable of records (see :func:`records_digest`)
            that ``requested.records_sha256`` was computed from; when the
            digests differ they are compared with the stored records to say
            how many differ and give an example image id.
        advice: str, the last sentence of the error (what to do).

    Returns:
        list of str: notes about fields the stored manifest lacks (a store
        written before they existed), empty if none.

    Raises:
        StoreMismatchError: (a ValueError) naming each field that differs:
            ``'<field>' differs (stored ..., requested ...)``, the adapter
            options with their values, and for the records the split, how many
            stored records differ and an example image id.
    """
    split_dir = os.fspath(split_dir)
    differ, parts, unknown = [], [], []
    for field in IDENTITY_FIELDS:
        a, b = getattr(stored, field), getattr(requested, field)
        if a is None or b is None:
            if a is None and b is not None:
                unknown.append(field)
            continue
        if a == b:
            continue
        differ.append(field)
        if field == "adapter_options":
            keys = sorted(set(a) | set(b), key=str)
            changed = {k: (a.get(k, "<unset>"), b.get(k, "<unset>")) for k in keys
                       if a.get(k, "<unset>") != b.get(k, "<unset>")}
            parts.append("manifest field 'adapter_options' differs: the dataset adapter options "
                         "(--dataset-options, --data-root) were "
                         f"{_fmt_options(a)} and are now {_fmt_options(b)} ("
                         + ", ".join(f"{k}: {x!r} -> {y!r}" for k, (x, y) in changed.items()) + ")")
        elif field == "records_sha256":
            what = (_describe_record_changes(split_dir, stored, records) if records is not None
                    else "the image ids or labels changed")
            parts.append(f"manifest field 'records_sha256' differs: the records of split "
                         f"{stored.split!r} are not those the store was extracted from: {what}")
        else:
            parts.append(f"manifest field '{field}' differs (stored {a!r}, requested {b!r})")
    if differ:
        raise StoreMismatchError(split_dir, differ, "; ".join(parts), advice)
    if unknown:
        names = {"adapter_options": "adapter options", "records_sha256": "records digest"}
        return [f"feature store {split_dir!r} was written before stores recorded "
                f"{' and '.join(names.get(f, f) for f in unknown)}: cannot check that its records "
                f"come from the same dataset options and labels; they are recorded from now on"]
    return []


# ----------------------------------------------------------------------------- lock
def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _read_lock(path):
    """(raw text, dict or None) of a lock file; (None, None) if there is none."""
    try:
        raw = fs.read_text(path)
    except FileNotFoundError:
        return None, None
    try:
        holder = json.loads(raw)
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
            holder = None
    except ValueError:
        holder = None
    return raw, holder


def acquire_lock(split_dir):
    """Take the writer lock of a split directory (``<split_dir>/writer.lock``).

    The lock file is created with ``O_CREAT | O_EXCL`` and holds JSON
    ``{"pid", "host", "token", "created"}``. An existing lock is *stale* --
    taken over, with a ``UserWarning`` naming it -- if its process no longer
    runs on this host, if it is held by this very process (a writer that was
    never closed), or if it has stayed empty or unreadable for a few seconds
    (a writer that died while creating it). A lock from another host cannot
    be checked and is never taken over.

    Args:
        split_dir: str or path-like, an existing directory.

    Returns:
        str, the token to pass to :func:`release_lock`.

    Raises:
        StoreLockedError: (a ValueError) naming the store, the pid and host
            holding the lock and the lock file.
    """
    split_dir = os.fspath(split_dir)
    path = os.path.join(split_dir, LOCK_NAME)
    host = socket.gethostname()
    token = uuid.uuid4().hex
    content = json.dumps({"pid": os.getpid(), "host": host, "token": token, "created": _now()})
    for _ in range(10):
        if not fs.is_local(path):
            # No atomic create-if-absent through tf.io.gfile: check, then write (see mll_tf.data.fs).
            if not fs.exists(path):
                with fs.open_file(path, "w") as f:
                    f.write(content + "\n")
                return token
        else:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = None
        if fs.is_local(path) and fd is not None:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content + "\n")
                f.flush()
                os.fsync(f.fileno())
            return token
        raw, holder = _read_lock(path)
        deadline = time.monotonic() + _LOCK_FILL_SECONDS
        while raw is not None and holder is None and time.monotonic() < deadline:
            try:  # an empty lock: its creator may be writing it right now
                if time.time() - fs.getmtime(path) > _LOCK_FILL_SECONDS:
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)
            raw, holder = _read_lock(path)
        if raw is None:
            continue  # released meanwhile: try again
        if holder is None:
            why = "it is empty or unreadable (a writer died while creating it)"
        elif holder.get("host") != host:
            raise StoreLockedError(split_dir, holder, (
                f"feature store {split_dir!r} is locked by process {holder['pid']} on host "
                f"{holder.get('host')!r} (lock file {path}), which cannot be checked from "
                f"{host!r}; if no extraction into it is running there, delete the lock file"))
        elif holder["pid"] == os.getpid():
            why = f"it is held by this process ({holder['pid']}), by a writer that was not closed"
        elif _pid_running(holder["pid"]):
            raise StoreLockedError(split_dir, holder, (
                f"feature store {split_dir!r} is being written by process {holder['pid']} on this "
                f"host (lock file {path}, since {holder.get('created', '?')}); wait for that "
                f"extraction to finish or write elsewhere (if that process is not an extraction, "
                f"delete the lock file)"))
        else:
            why = f"its process {holder['pid']} no longer runs on this host"
        # Take the stale lock over, unless someone else did in the meantime.
        if _read_lock(path)[0] != raw:
            continue
        warnings.warn(f"feature store {split_dir!r}: taking over the stale writer lock {path}: "
                      f"{why}")
        try:
            fs.remove(path)
        except FileNotFoundError:
            pass
    raise StoreLockedError(split_dir, {}, f"feature store {split_dir!r}: could not take the "
                                          f"writer lock {path} (other writers keep taking it)")


def release_lock(split_dir, token):
    """Remove ``<split_dir>/writer.lock`` if it still holds ``token`` (never another writer's lock)."""
    path = os.path.join(os.fspath(split_dir), LOCK_NAME)
    _, holder = _read_lock(path)
    if holder is not None and holder.get("token") == token:
        try:
            fs.remove(path)
        except FileNotFoundError:
            pass


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
    its identity fields (:data:`IDENTITY_FIELDS`) must match ``manifest``
    (:func:`check_identity`; a store without the later fields
    ``adapter_options``/``records_sha256`` is accepted with one
    ``UserWarning``, and ``manifest``'s values are recorded). A refused
    resume changes nothing on disk. Leftover ``*.tmp`` files are deleted. Complete shards that the manifest
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

    One writer per directory: the writer holds ``<split_dir>/writer.lock``
    (:func:`acquire_lock`: pid and host, stale locks of dead processes are
    taken over) from construction until :meth:`close`, or until the ``with``
    block ends, also on an exception.

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
        records: optional iterable of the source records (objects with
            ``image_id`` and ``labels``, or pairs) that
            ``manifest.records_sha256`` was computed from; only used to say
            which records differ when resuming is refused.

    Attributes:
        manifest: the :class:`Manifest` being written.
        done_ids: set of str, ids stored in complete shards or skipped
            (including those written or skipped by this writer).

    Raises:
        StoreMismatchError: (a ValueError) if the existing manifest's
            identity fields differ (naming the field, see
            :func:`check_identity`).
        StoreLockedError: (a ValueError) if another live process holds the
            directory's lock (naming its pid).
        ValueError: if a listed shard's size on disk differs from the
            manifest (corruption).
    """

    def __init__(self, split_dir, manifest, max_shard_bytes=64 * 2**20, compression_level=1,
                 overwrite=False, records=None):
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
        self._closed = True  # until the lock is held
        self._writer = None
        self._lock_token = None
        fs.makedirs(self.split_dir)
        self._lock_token = acquire_lock(self.split_dir)
        try:
            self._open(manifest, overwrite, records)
        except BaseException:
            self._release()
            raise

    def _release(self):
        token, self._lock_token = self._lock_token, None
        if token is not None:
            release_lock(self.split_dir, token)

    def _open(self, manifest, overwrite, records):
        if overwrite:
            self._wipe()
        manifest_path = os.path.join(self.split_dir, MANIFEST_NAME)
        if fs.exists(manifest_path):
            manifest = self._resume(Manifest.load(self.split_dir), manifest, records)
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
        manifest.compression_level = self.compression_level
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
        for name in sorted(fs.listdir(self.split_dir)):
            m = _STORE_FILE_RE.match(name)
            if m and (tmp is None or bool(m.group("tmp")) == tmp):
                out.append(os.path.join(self.split_dir, name))
        return out

    def _wipe(self):
        for path in self._store_files():
            fs.remove(path)
        for name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp"):
            if fs.exists(os.path.join(self.split_dir, name)):
                fs.remove(os.path.join(self.split_dir, name))

    def _delete_strays(self, keep):
        """Delete temp files, and shards/sidecars not in ``keep`` (basenames)."""
        for path in self._store_files():
            name = os.path.basename(path)
            base = name[:-len(".ids.txt")] + ".tfrecord" if name.endswith(".ids.txt") else name
            if name.endswith(".tmp") or base not in keep:
                fs.remove(path)

    def _resume(self, old, new, records=None):
        for note in check_identity(self.split_dir, old, new, records):
            warnings.warn(note)
        # Unknown (None) identity values of the request keep the stored ones.
        new = dataclasses.replace(new, **{f: getattr(old, f) for f in _LATER_IDENTITY_FIELDS
                                          if getattr(new, f) is None})
        if new.records_count is None:
            new.records_count = old.records_count
        for path in self._store_files(tmp=True):
            fs.remove(path)
        done = set()
        shards = []
        for shard in old.shards:
            path = os.path.join(self.split_dir, shard["file"])
            ids_file = _ids_path(path)
            if not fs.isfile(path) or not fs.isfile(ids_file):
                warnings.warn(f"feature store {self.split_dir!r}: shard {shard['file']} listed "
                              f"in the manifest is missing (or its ids file is); its "
                              f"{shard['num_examples']} images will be extracted again")
                continue
            size = fs.getsize(path)
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
            if fs.isfile(ids_file):
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
                               "num_bytes": fs.getsize(path)})
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
        fs.write_text_atomic(ids_file, "".join(i + "\n" for i in self._shard_ids))
        fs.rename(self._tmp_path, final)
        size = fs.getsize(final)
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
        if fs.exists(self._tmp_path):
            fs.remove(self._tmp_path)

    def _check_open(self):
        if self._closed:
            raise ValueError(f"FeatureStoreWriter for {self.split_dir!r} is closed")

    def _check_id(self, image_id, storing=True):
        if storing:
            schema.check_image_id(image_id)  # listed one per line in the ids file
        elif not isinstance(image_id, str) or not image_id:
            raise schema.InvalidImageIdError(f"image_id must be a non-empty str, got {image_id!r}")
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
            schema.InvalidImageIdError: (a ValueError) if the id is empty or
                holds a line break.
            schema.NonFiniteFeatureError: (a ValueError) naming the id, if the
                feature holds NaN/Inf or overflows the storage dtype.
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
            try:
                disk = fs.getsize(self._tmp_path)
            except FileNotFoundError:  # object stores show a file only once it is closed
                disk = self._disk
            if disk != self._disk:
                self._disk, self._raw_pending = disk, 0
        else:
            self._disk, self._raw_pending = self._raw_total, 0

    def skip(self, image_id, reason):
        """Record that ``image_id`` is deliberately not stored.

        The entry is saved with the next manifest save (shard completion,
        close, or an exception in the ``with`` block). Unlike :meth:`write`,
        an id with a line break is accepted (it is only listed in the
        manifest).

        Raises:
            ValueError: if the id is not a non-empty str, or was already
                written or skipped.
        """
        self._check_open()
        self._check_id(image_id, storing=False)
        self.manifest.skipped.append({"image_id": image_id, "reason": str(reason)})
        self.done_ids.add(image_id)

    def close(self):
        """Finish the last shard, save the manifest with ``complete=True``, release the lock.

        Returns:
            The final :class:`Manifest`. Calling ``close`` again returns it.

        Raises:
            OSError: if the last shard or the manifest cannot be written; the
                store is then left incomplete (resumable) and unlocked.
        """
        if self._closed:
            return self.manifest
        try:
            if self._writer is not None:
                self._finish_shard()
            self.manifest.complete = True
            self.manifest.save(self.split_dir)
        except BaseException:
            self._fail()
            raise
        self._closed = True
        self._release()
        return self.manifest

    def _fail(self):
        """After an error: keep what was written, save the manifest as incomplete, unlock."""
        if self._closed:
            return
        try:
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
        finally:
            self._closed = True
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return False
        self._fail()
        return False


def verify_command(split_dir, manifest):
    """The ``extract/build_tfrecords.py --verify`` command line that checks ``split_dir``."""
    split_dir = os.fspath(split_dir)
    if fs.is_local(split_dir):
        split_dir = os.path.abspath(split_dir)
    size = manifest.input_size[0] if manifest.input_size else "?"
    model_dir = os.path.dirname(split_dir)
    if os.path.basename(model_dir) == f"{manifest.backbone}_{size}":
        out_dir = os.path.dirname(os.path.dirname(model_dir))
        return (f"python extract/build_tfrecords.py --verify --dataset {manifest.dataset} "
                f"--backbone {manifest.backbone} --input-size {size} --out-dir {out_dir} "
                f"--splits {manifest.split}")
    return "extract/build_tfrecords.py --verify"


_INPUT_SHARD = threading.local()


@contextlib.contextmanager
def input_shard(num_shards, index):
    """Within the block, :func:`make_dataset` (this thread) reads only shard files ``files[index::num_shards]``.

    How a worker of a multi-worker job reads its part of a split
    (:func:`mll_tf.training.distribute.distribute_input`): whole files, in
    the manifest's order, ``index`` of every ``num_shards``; the other
    workers read the others. ``start_example`` and the passes then count
    this worker's records only.

    Args:
        num_shards: int >= 1, input pipelines (workers).
        index: int in ``[0, num_shards)``, this pipeline.
    """
    if not 0 <= int(index) < int(num_shards):
        raise ValueError(f"input_shard: index {index} not in [0, {num_shards})")
    previous = getattr(_INPUT_SHARD, "value", None)
    _INPUT_SHARD.value = (int(num_shards), int(index))
    try:
        yield
    finally:
        _INPUT_SHARD.value = previous


def make_dataset(split_dir, batch_size, *, shuffle=False, shuffle_buffer=4096, seed=None,
                 cache=False, repeat=False, drop_remainder=False, as_dict=False,
                 require_complete=True, start_example=0, check_finite=True):
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

    Damaged stores stop the stream (when the damaged part is reached, also
    inside ``keras.Model.fit``) with a ``tf.errors.InvalidArgumentError``
    whose message names the store and the shard or image, instead of a bare
    ``DataLossError: corrupted record at N``: each shard is read to its end
    and must yield exactly the manifest's count of records (a bad CRC, bad
    zlib data or a truncated file ends it early: "shard ... cannot be read
    past record k of n ... --verify"); a record whose stored
    ``feature_shape`` differs from the manifest's; and, with
    ``check_finite``, a feature holding NaN/Inf (one ``is_finite`` reduction
    per batch).

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
        check_finite: bool, stop with an error naming the store and the image
            id when a feature holds NaN/Inf (default True).

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
        tf.errors.InvalidArgumentError: while iterating, for a damaged shard,
            a record of another shape or a non-finite feature (see above).
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
    shards = manifest.shards
    sharding = getattr(_INPUT_SHARD, "value", None)
    if sharding is not None and sharding[0] > 1:
        workers, index = sharding
        if len(shards) < workers:
            raise ValueError(
                f"feature store {split_dir!r} has {len(shards)} shard file(s), fewer than the {workers} "
                f"workers reading it (each worker reads whole files); re-extract it with a smaller "
                f"--max-shard-mb so that every worker gets several shards")
        shards = shards[index::workers]
    files = [os.path.join(split_dir, s["file"]) for s in shards]
    for path in files:
        if not fs.isfile(path):
            raise FileNotFoundError(f"feature store shard {path!r} listed in "
                                    f"{os.path.join(split_dir, MANIFEST_NAME)!r} is missing")
    compression = manifest.compression or None
    autotune = tf.data.AUTOTUNE
    cycle = max(1, min(len(files), max(4, os.cpu_count() or 1)))
    seed = 0 if seed is None else int(seed)
    counts = [int(sh["num_examples"]) for sh in shards]
    n = sum(counts)
    start = int(start_example)

    where = f"feature store {split_dir!r}"
    verify = verify_command(split_dir, manifest)

    def read_shard(path, expected):
        """The first ``expected`` records of one shard, then (only if it ends early) a marker."""
        # A read error (bad CRC, bad zlib data, truncation) ends this shard's stream: the
        # TFRecord reader moves on to the next file after an error. The marker naming the
        # shard then comes within the first ``expected`` elements and stops the stream when
        # its batch is parsed; for a good shard ``take`` never reaches it (no per-record op).
        records = tf.data.TFRecordDataset(path, compression_type=compression).ignore_errors()
        marker = tf.strings.join([_END_OF_SHARD, path, "\0", tf.strings.as_string(expected)])
        return records.concatenate(tf.data.Dataset.from_tensors(marker)).take(expected)

    def check_no_marker(serialized):
        """``serialized`` [B], after checking that no shard ended early (one substr per record)."""
        is_marker = tf.equal(tf.strings.substr(serialized, 0, len(_END_OF_SHARD)), _END_OF_SHARD)

        def message():
            marker = tf.boolean_mask(serialized, is_marker)[0]
            parts = tf.strings.split(tf.strings.substr(marker, len(_END_OF_SHARD), -1), "\0")
            return tf.strings.join([
                f"{where}: shard ", parts[0], " cannot be read to its end: fewer than the ",
                parts[-1], " records the manifest lists are readable (corrupt or truncated: bad "
                f"CRC, bad zlib data or a short file); list every bad shard with: {verify}"])

        ok = schema._fail_unless(tf.logical_not(tf.reduce_any(is_marker)), message)
        with tf.control_dependencies([ok]):
            return tf.identity(serialized)

    def shard_list():
        return tf.data.Dataset.from_tensor_slices((tf.constant(files, dtype=tf.string),
                                                   tf.constant(counts, dtype=tf.int64)))

    def one_pass(epoch):
        """The records of pass ``epoch`` (a tf.int64 scalar), shuffled with (seed, epoch)."""
        # A fixed graph-level seed for this traced function: the order then depends on
        # (seed, epoch) only, not on the process's global seed.
        tf.random.set_seed(_PASS_GRAPH_SEED)
        pass_seed = seed * 1_000_003 + epoch
        ds = shard_list()
        if shuffle and len(files) > 1:
            ds = ds.shuffle(len(files), seed=pass_seed)
        ds = ds.interleave(read_shard, cycle_length=cycle, block_length=1,
                           num_parallel_calls=autotune, deterministic=True)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=pass_seed)
        return ds

    if cache:
        ds = shard_list().interleave(
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
        serialized = check_no_marker(serialized)
        out = schema.parse_examples(serialized, spec, source=split_dir, check_finite=check_finite)
        if as_dict:
            return out
        return out[schema.FEATURES_OUTPUT_KEY], out[schema.LABELS_KEY]

    ds = ds.map(parse, num_parallel_calls=autotune)
    return ds.prefetch(autotune)


class MissingFeaturesError(FileNotFoundError):
    """A split's feature store does not exist; the message holds the command that makes it."""


def _short(e, limit=160):
    msg = getattr(e, "message", None) or str(e)
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
    msg = re.sub(r"\s*\[Op:[^\]]*\].*$", "", msg, flags=re.S).strip()
    return msg[:limit]


def _verify_shard(split_dir, manifest, spec, shard):
    """The problems of one listed shard (list of str, empty if it is good)."""
    path = os.path.join(split_dir, shard["file"])
    if not fs.isfile(path):
        return ["missing (listed in the manifest)"]
    problems = []
    size = fs.getsize(path)
    if size != shard.get("num_bytes", size):
        problems.append(f"{size} bytes on disk, the manifest says {shard['num_bytes']}")
    rows, chans = spec.feature_shape
    dtype = np.dtype(schema.FEATURE_DTYPES[spec.feature_dtype])
    want_bytes = rows * chans * dtype.itemsize
    sizes = {schema.LABELS_KEY: spec.num_labels}
    sizes.update({schema.EXTRA_LABELS_PREFIX + k: v for k, v in spec.extra_labels.items()})
    ids, n, bad_records, first_bad, read_all = [], 0, 0, None, True
    ds = tf.data.TFRecordDataset(path, compression_type=manifest.compression or None).batch(256)
    it = iter(ds)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            # Locate the damage exactly: records of the failing batch before it count too.
            readable = n
            try:
                for _ in tf.data.TFRecordDataset(
                        path, compression_type=manifest.compression or None).skip(n):
                    readable += 1
            except tf.errors.OpError:
                pass
            problems.append(f"unreadable after record {readable} of {shard['num_examples']} "
                            f"({_short(e)})")
            read_all = False
            break
        for rec in batch.numpy():
            why = None
            try:
                f = tf.train.Example.FromString(rec).features.feature
                image_id = f[schema.IMAGE_ID_KEY].bytes_list.value[0].decode("utf-8")
            except Exception as e:  # noqa: BLE001 - any undecodable record is a problem
                image_id, why = f"#{n}", f"not a feature-store record ({type(e).__name__})"
            if why is None:
                ids.append(image_id)
                feat = f[schema.FEATURE_KEY].bytes_list.value if schema.FEATURE_KEY in f else []
                shape = list(f[schema.FEATURE_SHAPE_KEY].int64_list.value) \
                    if schema.FEATURE_SHAPE_KEY in f else None
                if len(feat) != 1:
                    why = "no feature"
                elif len(feat[0]) != want_bytes:
                    why = (f"feature holds {len(feat[0])} bytes, the manifest's {[rows, chans]} "
                           f"{spec.feature_dtype} needs {want_bytes}")
                elif shape is not None and shape != [rows, chans]:
                    why = f"feature_shape {shape}, the manifest says {[rows, chans]}"
                elif not np.all(np.isfinite(np.frombuffer(feat[0], dtype))):
                    why = "feature holds NaN/Inf"
                else:
                    for key, num in sizes.items():
                        lab = f[key].bytes_list.value if key in f else []
                        if len(lab) != 1 or len(lab[0]) != num:
                            why = f"{key} holds {len(lab[0]) if lab else 0} values, expected {num}"
                            break
                        if not np.all(np.isin(np.frombuffer(lab[0], np.int8), (-1, 0, 1))):
                            why = f"{key} holds values other than 1, 0, -1"
                            break
            if why is not None:
                bad_records += 1
                if first_bad is None:
                    first_bad = f"record {n} ({image_id!r}): {why}"
            n += 1
    if read_all and n != shard["num_examples"]:
        problems.append(f"{n} records, the manifest says {shard['num_examples']}")
    if bad_records:
        problems.append(f"{bad_records} bad record(s), first {first_bad}")
    ids_file = _ids_path(path)
    if not fs.isfile(ids_file):
        problems.append(f"its ids file {os.path.basename(ids_file)} is missing")
    else:
        listed = _read_ids(ids_file)
        if (listed != ids) if read_all else (listed[:len(ids)] != ids):
            problems.append(f"its ids file {os.path.basename(ids_file)} lists other ids than the "
                            f"records hold")
    return problems


def verify_store(split_dir):
    """Check every shard of a feature-store split against its manifest.

    Reads every listed shard to its end (every record's CRC and, for ZLIB
    shards, the compressed stream), and checks per shard: the file exists
    and has the manifest's size; it holds the manifest's number of records;
    each record has an ``image_id``, a ``feature`` of the manifest's byte
    length (``R * D *`` the dtype's size), a ``feature_shape`` (when present)
    equal to the manifest's, finite feature values, and labels of the
    manifest's lengths in {1, 0, -1}; its ids file lists the records' ids.

    Args:
        split_dir: str or path-like, the split directory.

    Returns:
        list of ``(shard_path, problem)`` pairs (str, str), one per bad shard
        (its problems joined with ``"; "``), in manifest order; empty if every
        shard is good.

    Raises:
        FileNotFoundError: naming the path, if the directory or its manifest
            is missing.
        ValueError: if the manifest is corrupt.
    """
    split_dir = os.fspath(split_dir)
    manifest = read_manifest(split_dir)
    spec = manifest.feature_spec()
    bad = []
    for shard in manifest.shards:
        problems = _verify_shard(split_dir, manifest, spec, shard)
        if problems:
            bad.append((os.path.join(split_dir, shard["file"]), "; ".join(problems)))
    return bad

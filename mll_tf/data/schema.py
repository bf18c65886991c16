"""TFRecord schema shared by every mll_tf feature store.

One schema serves every dataset (NUS-WIDE, OpenImages, CUB, clip-art, ...).
``extract/`` writes records with :func:`serialize_example`; the readers parse
them with :func:`parse_examples`. Nothing else in the code base should spell
out the keys, dtypes or byte layouts below.

Record layout (a ``tf.train.Example``; every feature holds exactly one value,
or ``[R, D]`` for ``feature_shape``):

=================  ===============================================================
key                content
=================  ===============================================================
``image_id``       UTF-8 string identifying the image (e.g. a relative path),
                   without line breaks.
``feature``        Raw little-endian bytes of the backbone feature map
                   ``[regions, channels]`` = ``[R, D]``, row-major (C order), i.e.
                   region ``r`` occupies values ``r*D ... r*D + D - 1``. A
                   ``[h, w, D]`` grid is flattened to ``R = h*w`` regions
                   row by row. Stored as ``float16`` by default (half the
                   size; the references store float32) or ``float32`` on
                   request; the dtype lives in the split's ``manifest.json``.
                   Every value is finite.
``feature_shape``  ``int64_list`` ``[R, D]``: the shape of ``feature``, checked
                   against the manifest when parsing (a manifest edited to
                   another shape of the same size is refused instead of
                   garbling the features). Records written before this key
                   existed lack it and are read as before.
``labels``         Raw ``int8`` bytes ``[C]``: ``1`` present, ``0`` absent,
                   ``-1`` unknown (the mll_tf convention, see
                   :mod:`mll_tf.labels`).
``labels/<name>``  Optional extra label sets, raw ``int8`` bytes ``[C_name]``
                   with the same coding, e.g. ``labels/unseen`` for the
                   OpenImages unseen classes or ``labels/tags`` for NUS-WIDE's
                   noisy 1k tags. Names are ``[A-Za-z0-9_.-]+``.
=================  ===============================================================

All keys but ``feature_shape`` are ``bytes_list`` features.

This follows the LESA reference storage (docs/labels_and_data.md §2: raw bytes in a
``bytes_list`` parsed with ``FixedLenFeature([], tf.string)`` and
``tf.io.decode_raw``), with the labels converted to the mll_tf convention and
stored as int8 instead of float32/int32.

Reading is batch-then-parse: batch the serialized records
first, then call :func:`parse_examples` on the whole ``[B]`` string tensor (one
parse op per batch instead of per record). With ZLIB shards reading is bound by
decompression, so the gain is small there (``benchmarks/bench_tfrecord.py``).

Example:

    spec = FeatureSpec(feature_shape=(196, 512), feature_dtype="float16",
                       num_labels=81, extra_labels={"tags": 925})
    record = serialize_example("img/0001.jpg", fmap, labels,
                               extra_labels={"tags": tags})
    parsed = parse_examples(tf.constant([record]), spec)
    parsed["features"]  # float32 [1, 196, 512]
"""

import dataclasses
import re

import numpy as np
import tensorflow as tf

#: Key of the UTF-8 image id.
IMAGE_ID_KEY = "image_id"
#: Key of the raw feature-map bytes.
FEATURE_KEY = "feature"
#: Key of the feature map's shape ``[R, D]`` (int64 list; absent in records of older stores).
FEATURE_SHAPE_KEY = "feature_shape"
#: Key of the main label set.
LABELS_KEY = "labels"
#: Prefix of the extra label sets: ``labels/<name>``.
EXTRA_LABELS_PREFIX = "labels/"
#: Key of the decoded feature map in the dict returned by :func:`parse_examples`.
FEATURES_OUTPUT_KEY = "features"

#: Feature dtypes a store may use, as ``numpy`` little-endian type strings.
FEATURE_DTYPES = {"float16": "<f2", "float32": "<f4"}
_TF_FEATURE_DTYPES = {"float16": tf.float16, "float32": tf.float32}
_EXTRA_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class InvalidImageIdError(ValueError):
    """An image id that cannot be stored: not a non-empty ``str``, or it holds a line break.

    One record's problem (its id is in the message): extraction records the
    image as skipped with this reason and goes on.
    """


class NonFiniteFeatureError(ValueError):
    """A feature map holding NaN/Inf, or values that overflow the storage dtype.

    One record's problem (its id is in the message): extraction records the
    image as skipped with this reason and goes on.
    """


def check_image_id(image_id):
    """Check that ``image_id`` can be stored (and listed one per line in a shard's ids file).

    Returns:
        ``image_id`` unchanged.

    Raises:
        InvalidImageIdError: (a ValueError) naming the id, if it is not a
            non-empty ``str`` or contains a line break (``\\n`` or ``\\r``).
    """
    if not isinstance(image_id, str) or not image_id:
        raise InvalidImageIdError(f"image_id must be a non-empty str, got {image_id!r}")
    if "\n" in image_id or "\r" in image_id:
        raise InvalidImageIdError(f"image_id {image_id!r} contains a line break")
    return image_id


def _check_feature_dtype(feature_dtype):
    name = np.dtype(feature_dtype).name if not isinstance(feature_dtype, str) else feature_dtype
    if name not in FEATURE_DTYPES:
        raise ValueError(
            f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}, got {feature_dtype!r}")
    return name


def _check_extra_name(name):
    if not isinstance(name, str) or not _EXTRA_NAME_RE.match(name):
        raise ValueError(
            f"extra label set name must match [A-Za-z0-9_.-]+ (it becomes the key "
            f"'labels/<name>'), got {name!r}")
    return name


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Static description of the records of one split, used to parse them.

    Normally obtained from a split's manifest (``Manifest.feature_spec()``).

    Attributes:
        feature_shape: tuple of two ints ``(R, D)``: regions and channels of
            each stored feature map.
        feature_dtype: str, ``"float16"`` or ``"float32"``: the storage dtype
            of ``feature`` (parsed features are always float32).
        num_labels: int, ``C``, the length of ``labels``.
        extra_labels: dict ``name -> C_name`` of the extra label sets
            ``labels/<name>`` present in every record (may be empty).

    Raises:
        ValueError: on a malformed shape, an unknown dtype, a negative label
            count or an invalid extra label set name.
    """

    feature_shape: tuple
    feature_dtype: str = "float16"
    num_labels: int = 0
    extra_labels: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shape = tuple(int(s) for s in self.feature_shape)
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(
                f"FeatureSpec.feature_shape must be (regions, channels) with positive "
                f"sizes, got {self.feature_shape!r}")
        object.__setattr__(self, "feature_shape", shape)
        object.__setattr__(self, "feature_dtype", _check_feature_dtype(self.feature_dtype))
        if int(self.num_labels) < 0:
            raise ValueError(f"FeatureSpec.num_labels must be >= 0, got {self.num_labels}")
        object.__setattr__(self, "num_labels", int(self.num_labels))
        extra = {}
        for name, num in dict(self.extra_labels or {}).items():
            _check_extra_name(name)
            if int(num) < 0:
                raise ValueError(
                    f"FeatureSpec.extra_labels[{name!r}] must be >= 0, got {num}")
            extra[name] = int(num)
        object.__setattr__(self, "extra_labels", extra)

    def record_spec(self):
        """The ``tf.io.parse_example`` feature spec of a record.

        Returns:
            dict ``key -> tf.io.FixedLenFeature([], tf.string)`` for
            ``image_id``, ``feature``, ``labels`` and every ``labels/<name>``.
        """
        keys = [IMAGE_ID_KEY, FEATURE_KEY, LABELS_KEY]
        keys += [EXTRA_LABELS_PREFIX + name for name in self.extra_labels]
        return {k: tf.io.FixedLenFeature([], tf.string) for k in keys}


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _labels_bytes(image_id, field, values, expected_len):
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"image_id {image_id!r}: field '{field}' must be numeric (int8 preferred), "
            f"got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(
            f"image_id {image_id!r}: field '{field}' must be 1-D [C], got shape {arr.shape}")
    if expected_len is not None and arr.shape[0] != expected_len:
        raise ValueError(
            f"image_id {image_id!r}: field '{field}' has {arr.shape[0]} labels, "
            f"expected {expected_len}")
    ok = (arr == 1) | (arr == 0) | (arr == -1)
    if not np.all(ok):
        bad = np.unique(arr[~ok])[:5].tolist()
        raise ValueError(
            f"image_id {image_id!r}: field '{field}' must hold only 1 (present), 0 (absent) "
            f"or -1 (unknown); found {bad}")
    return arr.astype(np.int8).tobytes()


def serialize_example(image_id, feature, labels, extra_labels=None,
                      feature_dtype="float16", *, spec=None):
    """Validate one example and serialize it as a ``tf.train.Example``.

    Args:
        image_id: str, non-empty, identifying the image (stored UTF-8).
        feature: array-like ``[R, D]`` of real numbers, the feature map with
            regions first. Cast to ``feature_dtype`` (little-endian).
        labels: array-like ``[C]`` with values in {1, 0, -1} (any integer,
            bool or float dtype holding exactly these values); stored int8.
        extra_labels: optional dict ``name -> array-like [C_name]`` with the
            same coding, stored under ``labels/<name>``.
        feature_dtype: str, ``"float16"`` (default) or ``"float32"``.
        spec: optional :class:`FeatureSpec`. When given, its
            ``feature_dtype`` is used (``feature_dtype`` is ignored) and the
            feature shape, label count and extra label set names and sizes
            must match it.

    Returns:
        bytes: the serialized ``tf.train.Example`` (keys ``image_id``,
        ``feature``, ``feature_shape`` = ``[R, D]``, ``labels`` and
        ``labels/<name>``).

    Raises:
        InvalidImageIdError: (a ValueError) if the id is not a non-empty
            string or contains a line break.
        NonFiniteFeatureError: (a ValueError) naming ``image_id`` and the
            field, if the feature holds NaN/inf or values that overflow the
            storage dtype (|x| > 65504 for float16).
        ValueError: naming ``image_id`` and the field, if the feature is not
            a 2-D real array, a label set has the wrong rank/length or a value
            outside {1, 0, -1}, or the extra label sets do not match ``spec``.
    """
    check_image_id(image_id)
    if spec is not None:
        feature_dtype = spec.feature_dtype
    feature_dtype = _check_feature_dtype(feature_dtype)

    feat = np.asarray(feature)
    if feat.dtype.kind not in "biuf":
        raise ValueError(
            f"image_id {image_id!r}: field 'feature' must be a real array, got dtype {feat.dtype}")
    if feat.ndim != 2:
        raise ValueError(
            f"image_id {image_id!r}: field 'feature' must be 2-D [regions, channels], "
            f"got shape {feat.shape}")
    if spec is not None and tuple(feat.shape) != spec.feature_shape:
        raise ValueError(
            f"image_id {image_id!r}: field 'feature' has shape {tuple(feat.shape)}, "
            f"expected {spec.feature_shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        stored = feat.astype(FEATURE_DTYPES[feature_dtype])
    if not np.all(np.isfinite(stored)):
        n_in = int(np.sum(~np.isfinite(feat))) if feat.dtype.kind == "f" else 0
        why = (f"holds NaN/inf ({n_in} of {feat.size} values)" if n_in else
               f"overflows {feature_dtype} (max |value| {float(np.max(np.abs(feat))):g})")
        raise NonFiniteFeatureError(f"image_id {image_id!r}: field 'feature' {why}")

    extra_labels = dict(extra_labels or {})
    if spec is not None and set(extra_labels) != set(spec.extra_labels):
        raise ValueError(
            f"image_id {image_id!r}: extra label sets {sorted(extra_labels)} do not match "
            f"the spec's {sorted(spec.extra_labels)}")

    fields = {
        IMAGE_ID_KEY: _bytes_feature(image_id.encode("utf-8")),
        FEATURE_KEY: _bytes_feature(stored.tobytes(order="C")),
        FEATURE_SHAPE_KEY: _int64_feature(feat.shape),
        LABELS_KEY: _bytes_feature(_labels_bytes(
            image_id, LABELS_KEY, labels, spec.num_labels if spec is not None else None)),
    }
    for name in sorted(extra_labels):
        _check_extra_name(name)
        key = EXTRA_LABELS_PREFIX + name
        expected = spec.extra_labels[name] if spec is not None else None
        fields[key] = _bytes_feature(_labels_bytes(image_id, key, extra_labels[name], expected))
    example = tf.train.Example(features=tf.train.Features(feature=fields))
    return example.SerializeToString()


def _decode_fixed(raw, dtype, num, field, where="parse_examples"):
    """decode_raw a [B] string tensor into [B, num] with a clear size check."""
    flat = tf.io.decode_raw(raw, dtype)
    check = tf.debugging.assert_equal(
        tf.shape(flat)[1], num,
        message=f"{where}: field {field} does not hold {num} {dtype.name} values "
                f"per record; the FeatureSpec does not match the records")
    with tf.control_dependencies([check] if check is not None else []):
        flat = tf.identity(flat)  # the check runs before any reshape
    return tf.ensure_shape(flat, [None, num])  # static inner dimension


def _fail_unless(ok, message_fn):
    """A bool tensor that is True, or raises InvalidArgumentError with ``message_fn()`` (a string tensor).

    The message is only built when ``ok`` is False (one cheap ``tf.cond``).
    """
    def fail():
        with tf.control_dependencies([tf.debugging.Assert(False, [message_fn()], summarize=1)]):
            return tf.constant(False)

    return tf.cond(ok, lambda: tf.constant(True), fail)


def _first_bad_id(ids, bad):
    return tf.boolean_mask(ids, bad)[0]


def parse_examples(serialized, spec, *, source=None, check_finite=False):
    """Parse a batch of serialized records (batch-then-parse).

    Uses only TensorFlow ops (``tf.io.parse_example``, ``tf.io.decode_raw``,
    ``tf.reshape``, ``tf.cast``), so it runs eagerly and inside
    ``tf.data.Dataset.map``. A record's ``feature_shape`` (when it has one)
    must equal ``spec.feature_shape``.

    Args:
        serialized: tf.string tensor ``[B]`` of serialized ``tf.train.Example``
            records (a scalar string is accepted too; the batch dimension is
            then dropped from every output).
        spec: :class:`FeatureSpec` describing the records.
        source: optional str naming where the records come from (e.g. the
            feature store's directory), used in error messages.
        check_finite: bool, also check that every feature value is finite
            (one ``reduce_sum`` per batch; the exact per-record check runs
            only when the sum is not finite).

    Returns:
        dict with
        ``"image_id"``: tf.string ``[B]``;
        ``"features"``: float32 ``[B, R, D]``;
        ``"labels"``: int8 ``[B, C]`` (1 present, 0 absent, -1 unknown);
        ``"labels/<name>"``: int8 ``[B, C_name]`` for each extra label set.

    Raises:
        tf.errors.InvalidArgumentError: (when the op runs) if a record lacks a
            key of the spec, if a field's byte size does not match the spec
            (the message names the field), if a record's ``feature_shape``
            differs from ``spec.feature_shape``, or with ``check_finite`` if a
            feature holds NaN/Inf (these two messages name ``source`` and the
            record's image id).
    """
    where = f"feature store {source!r}" if source is not None else "parse_examples"
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    scalar = serialized.shape.rank == 0
    if scalar:
        serialized = tf.reshape(serialized, [1])
    record_spec = spec.record_spec()
    record_spec[FEATURE_SHAPE_KEY] = tf.io.FixedLenFeature([2], tf.int64, default_value=[0, 0])
    raw = tf.io.parse_example(serialized, record_spec)
    ids = raw[IMAGE_ID_KEY]
    rows, chans = spec.feature_shape
    feat = _decode_fixed(raw[FEATURE_KEY], _TF_FEATURE_DTYPES[spec.feature_dtype],
                         rows * chans, FEATURE_KEY, where)
    # [0, 0]: a record written before records carried their shape.
    shape = raw[FEATURE_SHAPE_KEY]
    shape_ok = tf.reduce_all(tf.equal(shape, tf.constant([rows, chans], tf.int64))
                             | tf.equal(shape, 0), axis=1)

    def shape_message():
        bad = tf.logical_not(shape_ok)
        got = tf.strings.reduce_join(tf.strings.as_string(tf.boolean_mask(shape, bad)[0]),
                                     separator=", ")
        return tf.strings.join([
            f"{where}: record '", _first_bad_id(ids, bad), "' holds a feature of shape [", got,
            f"] but the manifest's feature_shape is [{rows}, {chans}] (an edited manifest, or "
            f"records of another extraction); reading it would garble the features"])

    checks = [_fail_unless(tf.reduce_all(shape_ok), shape_message)]
    feat = tf.reshape(feat, [-1, rows, chans])
    if spec.feature_dtype != "float32":
        feat = tf.cast(feat, tf.float32)
    if check_finite:
        def exact_check():
            finite = tf.reduce_all(tf.math.is_finite(feat), axis=[1, 2])

            def finite_message():
                bad = tf.logical_not(finite)
                more = tf.strings.as_string(tf.reduce_sum(tf.cast(bad, tf.int32)) - 1)
                return tf.strings.join([
                    f"{where}: record '", _first_bad_id(ids, bad), "' (and ", more,
                    " more in its batch) holds NaN/Inf features; re-extract those images "
                    "(the store is damaged or was not written by this library)"])

            return _fail_unless(tf.reduce_all(finite), finite_message)

        # One sum per batch: finite unless a value is NaN/Inf (or, for float32 stores of
        # huge values, the sum overflows: then the exact check decides).
        checks.append(tf.cond(tf.math.is_finite(tf.reduce_sum(feat)),
                              lambda: tf.constant(True), exact_check))
    with tf.control_dependencies(checks):
        feat = tf.identity(feat)
    out = {
        IMAGE_ID_KEY: ids,
        FEATURES_OUTPUT_KEY: feat,
        LABELS_KEY: _decode_fixed(raw[LABELS_KEY], tf.int8, spec.num_labels, LABELS_KEY, where),
    }
    for name, num in spec.extra_labels.items():
        key = EXTRA_LABELS_PREFIX + name
        out[key] = _decode_fixed(raw[key], tf.int8, num, key, where)
    if scalar:
        out = {k: v[0] for k, v in out.items()}
    return out

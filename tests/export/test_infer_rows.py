"""infer.py's CSV cells, by hand: attribute tables answer #N/A below the winner's threshold."""

import types

import numpy as np

from mll_tf.cli.infer import _header, _rows, read_list_file


def test_attribute_rows_with_na_and_label_sets(tmp_path):
    im = types.SimpleNamespace(groups={"neck": [0, 1], "sleeve": [2, 3, 4]},
                               classes={"neck": ["round", "v"], "sleeve": ["short", "long", "none"]},
                               image_column="filename")
    names = ["neck=round", "neck=v", "sleeve=short", "sleeve=long", "sleeve=none"]
    s = np.array([[0.6, 0.3, 0.2, 0.5, 0.1],
                  [0.2, 0.4, 0.7, 0.1, 0.3]])
    thr = np.array([0.5, 0.5, 0.6, 0.6, 0.5])
    assert _header(im, 3, True) == ["filename", "neck", "sleeve", "neck_score", "sleeve_score", "error"]
    # row 0: neck round .6 >= .5; sleeve long .5 < .6 -> #N/A. row 1: neck v .4 < .5 -> #N/A; short .7 >= .6
    assert _rows(im, names, s, thr, 3) == [(["round", "#N/A"], ["0.600000", "0.500000"]),
                                           (["#N/A", "short"], ["0.400000", "0.700000"])]
    assert [r[0] for r in _rows(im, names, s, None, 3)] == [["round", "long"], ["v", "short"]]
    flat = types.SimpleNamespace(groups=None)
    assert _header(flat, 2, True) == ["image", "error", "labels", "label_1", "score_1", "label_2", "score_2"]
    assert _rows(flat, names, s, thr, 2) == [
        ["neck=round", "neck=round", "0.600000", "sleeve=long", "0.500000"],
        ["sleeve=short", "sleeve=short", "0.700000", "neck=v", "0.400000"]]


def test_list_file(tmp_path):
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "sub" / "l.txt"
    lst.write_bytes("\ufeffa.png\n\n# comment\n/abs/b.jpg\n".encode())
    assert read_list_file(str(lst)) == [str(tmp_path / "sub" / "a.png"), "/abs/b.jpg"]
    lst.write_bytes(b"ok.png\n\xff\xfe\n")
    import pytest
    with pytest.raises(ValueError, match="line 2 is not UTF-8"):
        read_list_file(str(lst))

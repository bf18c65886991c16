import numpy as np
import pytest
from PIL import Image

from mll_tf.data.images import load_rgb_center_crop


def test_center_crop_of_shorter_side(tmp_path):
    # 40x20 image: left half red, right half blue, a green middle band 10 px wide
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :15] = (255, 0, 0)
    a[:, 15:25] = (0, 255, 0)
    a[:, 25:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = load_rgb_center_crop(str(tmp_path / "x.png"), 10)
    # shorter side 20 -> 10 (x0.5): 20x10, central 10x10 = the green band
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 3:7], np.broadcast_to([0, 255, 0], (10, 4, 3)))


def test_alpha_on_white_and_errors(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert (load_rgb_center_crop(str(tmp_path / "t.png"), 4) == 255).all()
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        load_rgb_center_crop(str(tmp_path / "empty.jpg"), 4)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError):
        load_rgb_center_crop(str(tmp_path / "bad.jpg"), 4)

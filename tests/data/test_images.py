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


_TEXT_DRAWINGS = ["/usr/share/openclipart/svg/computer/hardware/hub_ruairi_hann_r.svg",      # text at font-size 8
                  "/usr/share/openclipart/svg/logos/info_michael_tunnicliffe_01.svg"]         # text at font-size 12
_RENDER = """
import hashlib, sys
import numpy as np
from mll_tf.data.images import decode_image
print(" ".join(hashlib.md5(np.asarray(decode_image(p, 224)).tobytes()).hexdigest() for p in sys.argv[1:]))
"""


def _need_clipart():
    import os

    if not all(os.path.exists(p) for p in _TEXT_DRAWINGS):
        pytest.skip("the Debian package openclipart-svg is not installed (make install installs it)")


def test_svg_text_renders_the_same_whichever_drawing_came_first():
    """Two clip-art drawings with text in a font that is not installed ("Bitstream Vera Sans", a fallback), at
    different sizes, each rendered first in a fresh process. Without the fonts pinned, cairo resolved the fallback
    at the size of its first use, and both drawings' text came out differently in the two orders (checked)."""
    import os
    import subprocess
    import sys

    _need_clipart()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)

    def hashes(order):
        out = subprocess.run([sys.executable, "-c", _RENDER, *order], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return dict(zip(order, out))

    forward, backward = hashes(_TEXT_DRAWINGS), hashes(_TEXT_DRAWINGS[::-1])
    assert forward == backward


def test_svg_rendering_on_threads_equals_sequential():
    """tf.data decodes images on several threads: rendering the text drawings concurrently gives the sequential
    pixels (and does not crash cairo)."""
    from concurrent.futures import ThreadPoolExecutor

    from mll_tf.data.images import decode_image

    _need_clipart()
    paths = _TEXT_DRAWINGS * 4
    sequential = [decode_image(p, 96) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda p: decode_image(p, 96), paths))
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)

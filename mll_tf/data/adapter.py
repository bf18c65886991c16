"""Dataset adapters: turn a dataset on disk into labelled image records.

An adapter scans a dataset in its official layout and returns a
:class:`PreparedDataset`: the label vocabulary, the splits (lists of
:class:`ImageRecord`) and the files it had to skip, each with a reason.
Images are decoded later, in worker processes, by the adapter's picklable
``load_image`` function, so decoding runs in parallel with inference
(``mll_tf.data.extraction``).
"""

import dataclasses
from typing import Callable, Dict, List

import numpy as np


@dataclasses.dataclass
class ImageRecord:
    """One image of a split.

    Attributes:
        image_id: str, unique within the dataset (a path relative to the root).
        path: str, absolute path of the image file.
        labels: int8 array ``[C]``: 1 present, 0 absent, -1 unknown.
    """
    image_id: str
    path: str
    labels: np.ndarray


@dataclasses.dataclass
class PreparedDataset:
    """What an adapter hands to the extractor.

    Attributes:
        name: dataset name (registry key).
        label_names: list of C label names, in column order.
        splits: split name -> list of :class:`ImageRecord`.
        skipped: split name -> list of ``{"image_id", "reason"}`` for files
            rejected while scanning (e.g. an unreadable or empty file).
        load_image: picklable callable ``(path: str, size: int) -> uint8
            [size, size, 3]`` RGB array; raises on an unreadable image.
        preprocessing: human-readable description of ``load_image``.
        extra: free metadata recorded in every split's manifest.
    """
    name: str
    label_names: List[str]
    splits: Dict[str, List[ImageRecord]]
    skipped: Dict[str, List[dict]]
    load_image: Callable
    preprocessing: str
    extra: dict = dataclasses.field(default_factory=dict)

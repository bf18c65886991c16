"""OpenImages v3 ("2017_11") with 5000 trainable classes (IMCL, docs/labels_and_data.md §3).

Layout under ``root`` (IMCL keeps ``data/2017_11/`` and
``image_data/OpenImages/<split>/``; pass ``image_dirs`` to match that):

==========================================  ====================================
``2017_11/classes-trainable.txt``           5000 MIDs, one per line: the class
                                            list and order (IMCL ``labelmap``)
``2017_11/class-descriptions.csv``          ``MID,name``, no header (19,995)
``2017_11/train/annotations-human.csv``     human-verified labels, header
``2017_11/validation/annotations-human.csv``  ``ImageID,Source,LabelName,
``2017_11/test/annotations-human.csv``      Confidence`` (from
                                            ``annotations_human_2017_11.tar.gz``)
``train/<ImageID>.jpg``, ``validation/``,   images (downloaded from the URLs of
``test/``                                   ``images_2017_11.tar.gz``)
==========================================  ====================================

Labels follow IMCL's ``extract_feature_2_TFRecords_OpenImages.py``, which
writes ``2*Confidence - 1`` for MIDs of the class list and 0 ("not annotated")
elsewhere; converted to mll_tf that is ``Confidence 1 -> 1``, ``0 -> 0`` and
not annotated ``-> -1`` (``mll_tf.labels.from_pm1``). As in IMCL, every ImageID
of a split's CSV whose image file exists is listed, also those without any row
in the class list (all -1; ``drop_empty=False`` by default). IMCL resolves an
(image, class) pair given twice by keeping the last row in file order; here
the ``conflict`` option decides (default: positive wins), and conflicts are
counted. IMCL feeds raw JPEG bytes to the OID ResNet-101 checkpoint; the
``load_image`` here decodes and center-crops for a Keras backbone instead.
"""

from mll_tf.data.datasets._oi_common import OpenImagesAdapterBase, load_image  # noqa: F401
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "data/openimages_v3"


@register_dataset("openimages_v3")
class OpenImagesV3(OpenImagesAdapterBase):
    """Adapter for the OpenImages 2017_11 release used by IMCL (C = 5000).

    Args:
        root: str, folder holding ``2017_11/`` and the image folders
            (default ``data/openimages_v3``).
        classes_file: str, default ``2017_11/classes-trainable.txt``.
        classes: optional list of MIDs overriding ``classes_file``.
        descriptions_file: str, default ``2017_11/class-descriptions.csv``.
        label_files: dict split -> CSV path, merged over
            ``{"train": "2017_11/train/annotations-human.csv", "val":
            "2017_11/validation/annotations-human.csv", "test":
            "2017_11/test/annotations-human.csv"}``.
        image_dirs: dict split -> image folder, merged over
            ``{"train": "train", "val": "validation", "test": "test"}``.
        splits: iterable of split names to read (default all three).
        conflict: ``"positive"`` (default), ``"negative"`` or ``"unknown"``.
        drop_empty: bool (default False, as IMCL): drop images with no row
            in the class list.
        max_skipped_listed: int or None (default 10000).
        chunksize: int, CSV rows parsed at once (default 1,000,000).

    ``prepare()`` returns a :class:`~mll_tf.data.adapter.PreparedDataset`
    exactly as :class:`~mll_tf.data.datasets.openimages_v6.OpenImagesV6`
    describes (same record type, skip reasons and ``extra`` keys, with
    ``extra["version"] == "2017_11"``).

    Raises:
        FileNotFoundError: naming the missing root, class list, descriptions
            file, label CSV or image folder of a requested split.
        ValueError: naming the file (and line) of a malformed class list,
            description or label CSV, or a class without description.
    """

    name = "openimages_v3"
    version = "2017_11"
    DEFAULT_CLASSES_FILE = "2017_11/classes-trainable.txt"
    DEFAULT_DESCRIPTIONS_FILE = "2017_11/class-descriptions.csv"
    DEFAULT_LABEL_FILES = {
        "train": "2017_11/train/annotations-human.csv",
        "val": "2017_11/validation/annotations-human.csv",
        "test": "2017_11/test/annotations-human.csv",
    }
    DEFAULT_DROP_EMPTY = False

    def __init__(self, root=DEFAULT_ROOT, **options):
        super().__init__(root, **options)

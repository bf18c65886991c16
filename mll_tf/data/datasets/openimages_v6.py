"""OpenImages V6 with human-verified image-level labels (CSL, docs/labels_and_data.md §3).

Official file names (storage.googleapis.com/openimages/v6 and /v5), all
directly under ``root`` by default:

=================================================  =============================
``oidv6-classes-trainable.txt``                    9605 trainable MIDs, one per
                                                   line, no header (default
                                                   class list and order)
``oidv6-class-descriptions.csv``                   ``LabelName,DisplayName``
                                                   (header; 19,994 MIDs in the
                                                   copy committed by CSL)
``oidv6-train-annotations-human-imagelabels.csv``  train labels
``validation-annotations-human-imagelabels.csv``   val labels (a V5 file)
``test-annotations-human-imagelabels.csv``         test labels (a V5 file)
``train/<ImageID>.jpg``, ``validation/...``,       images
``test/...``
=================================================  =============================

Label CSVs have the header ``ImageID,Source,LabelName,Confidence``; labels are
``Confidence 1 -> 1``, ``0 -> 0`` and never annotated ``-> -1``, CSL's own
target convention (docs/labels_and_data.md §1; CSL issue #1: "a few positives and
negatives per image, the rest unknown"). Images are listed only if they appear
in their split's CSV; with ``drop_empty=True`` (default) images none of whose
rows is in the class list are dropped as well (they carry no label; the LESA
OpenImages pipeline does the same, LESA issue #2). Rows with a MID outside the
class list are ignored and counted.

Class order: CSL's released checkpoints carry their own ``idx_to_class``
(9605 classes); pass it as ``classes=[...]`` so columns match
the checkpoint's outputs. ``data/oidv6-class-descriptions.csv`` of the CSL
repository is the full description list (19,994 MIDs), not the 9605-class
order; pass ``classes_file="oidv6-class-descriptions.csv"`` to use all of it.

The Alibaba-MIIL re-packaged download (``data.csv``, ``mid_to_classes.pth``,
images resized to shorter side 256) is not an official layout and is not read.
"""

from mll_tf.data.datasets._oi_common import OpenImagesAdapterBase, load_image  # noqa: F401
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "data/openimages_v6"


@register_dataset("openimages_v6")
class OpenImagesV6(OpenImagesAdapterBase):
    """Adapter for OpenImages V6 human-verified image-level labels.

    Args:
        root: str, dataset folder (default ``data/openimages_v6``).
        classes_file: str, class list (``.txt`` one MID per line, or a CSV
            whose first column is the MID); default
            ``oidv6-classes-trainable.txt``.
        classes: optional list of MIDs, the column order (e.g. a CSL
            checkpoint's ``idx_to_class`` values); overrides ``classes_file``.
        descriptions_file: str, ``MID,DisplayName`` CSV (default
            ``oidv6-class-descriptions.csv``); every class needs a name.
        label_files: dict split -> CSV path, merged over the defaults above.
        image_dirs: dict split -> image folder, merged over
            ``{"train": "train", "val": "validation", "test": "test"}``.
        splits: iterable of split names to read (others are returned empty),
            default all of ``("train", "val", "test")``.
        conflict: ``"positive"`` (default), ``"negative"`` or ``"unknown"``:
            the label of an (image, class) pair verified both 1 and 0.
        drop_empty: bool (default True), drop images with no row in the
            class list.
        max_skipped_listed: int or None (default 10000), how many skipped
            images are listed per split; all are counted in
            ``extra["skipped_counts"]``.
        chunksize: int, CSV rows parsed at once (default 1,000,000).

    ``prepare()`` returns a :class:`~mll_tf.data.adapter.PreparedDataset`:
    ``label_names`` = the C MIDs; splits ``train``/``val``/``test`` of
    :class:`~mll_tf.data.datasets._oi_common.SparseLabelRecord` (``image_id``
    = ImageID, ``labels`` int8 ``[C]`` in {1, 0, -1}, built on access); a
    missing image file is skipped with reason ``"missing image file ..."``.
    ``extra`` keys: ``root``, ``version``, ``class_source``,
    ``descriptions_file``, ``label_files``, ``image_dirs``,
    ``splits_prepared``, ``label_text`` (display names, parallel to
    ``label_names``), ``label_counts_by_split`` / ``negative_counts_by_split``
    ({split: {MID: count}} over the kept records), ``csv_stats`` (per split:
    rows, ignored_rows, ignored_mids, duplicate_rows, conflicting_pairs,
    images, images_without_class_labels, kept, dropped_without_class_labels,
    skipped_by_reason), ``ignored_rows_by_split``, ``skipped_counts``,
    ``conflict``, ``drop_empty``, ``label_source``.

    Raises:
        FileNotFoundError: naming the missing root, class list, descriptions
            file, label CSV or image folder of a requested split.
        ValueError: naming the file (and line) of a malformed class list,
            description or label CSV, or a class without description.
    """

    name = "openimages_v6"
    version = "v6"
    DEFAULT_CLASSES_FILE = "oidv6-classes-trainable.txt"
    DEFAULT_DESCRIPTIONS_FILE = "oidv6-class-descriptions.csv"
    DEFAULT_LABEL_FILES = {
        "train": "oidv6-train-annotations-human-imagelabels.csv",
        "val": "validation-annotations-human-imagelabels.csv",
        "test": "test-annotations-human-imagelabels.csv",
    }
    DEFAULT_DROP_EMPTY = True

    def __init__(self, root=DEFAULT_ROOT, **options):
        super().__init__(root, **options)

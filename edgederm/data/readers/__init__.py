"""Readers for the official dermoscopy data-set layouts, behind one registry.

``read_dataset(path)`` finds the reader whose ``detect`` recognises ``path`` (or uses the one named
by ``fmt``) and returns a ``DatasetIndex``. Readers are registered with ``@register_reader``
(``registry``); the CLI lists them with ``list_readers()``. One module per family (``ham10000``,
``isic``, ``ph2``, ``folder``, ``dermamnist``) registers its readers on import; the helpers they
share are in ``common``.

Registered formats (``taxonomy`` defaults in brackets):

* ``ham10000`` [ham7]: ``HAM10000_metadata.csv`` + ``HAM10000_images_part_1/``, ``_part_2/`` (or a
  flat ``images/``). Option ``images=`` adds an image folder.
* ``isic2018`` [ham7]: ISIC 2018 Task 3 one-hot ``ISIC2018_Task3_<Split>_GroundTruth.csv`` +
  ``ISIC2018_Task3_<Split>_Input/``; ``*_LesionGroupings.csv`` is joined when present. Options
  ``split=`` (train/validation/test, needed when several ground truths are present), ``images=``.
* ``isic2019`` [isic2019_8]: ``ISIC_2019_Training_GroundTruth.csv`` + ``_Metadata.csv`` +
  ``ISIC_2019_Training_Input/``. Option ``split="test"`` reads the test set instead:
  ``ISIC_2019_Test_subset_labels.csv`` (column ``dx``) + ``ISIC_2019_Test_Input_subset/``, or the
  official one-hot ``ISIC_2019_Test_GroundTruth.csv`` + ``ISIC_2019_Test_Metadata.csv`` +
  ``ISIC_2019_Test_Input/``. Without ``split`` the training set is read when its ground truth is
  present, else the test set. The default 8-class taxonomy drops ``UNK`` (into ``skipped``); pass
  ``taxonomy="isic2019_9"`` to keep it. Image ids lose the official ``_downsampled`` suffix
  (``ISIC_0000045_downsampled`` -> ``ISIC_0000045``, ``meta["downsampled"] = True``) so they match
  the same image in other releases; the file is found with or without the suffix.
* ``isic2020`` [binary]: ``ISIC_2020_Training_GroundTruth.csv`` (or ``_v2``) + ``train/``. Binary
  labels come from ``target``; any other taxonomy uses the ``diagnosis`` column (most images are
  "unknown" and are skipped).
* ``ph2`` [ph2_3]: ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.{bmp,jpg,png}``, the
  lesion mask ``IMDxxx_lesion/IMDxxx_lesion.*`` as ``mask_ref``, labels from the "Clinical
  Diagnosis" column of ``PH2_dataset.txt`` (the original ``||``-separated table, or a
  tab-separated export of it).
* ``imagefolder`` [folder names, sorted]: one sub-folder per class. Option ``classes=``.
* ``csv`` [sorted labels]: a manifest with ``path,label[,lesion_id][,patient_id][,image_id]``;
  paths relative to the CSV's folder or absolute; other columns go to ``meta``. Option ``classes=``.
* ``dermamnist`` [ham7]: MedMNIST's ``dermamnist*.npz``; option ``split=`` (train/val/test/all).
  ``Record.ref`` is ``/abs/file.npz::train_images[12]``. Note that MedMNIST split HAM10000 by image,
  not by lesion, so its splits share lesions.

Images listed in a label file but absent on disk are skipped with reason "missing file" and counted
in one warning line; ``strict=True`` turns that into a DataError. Records whose label has no class
in the requested taxonomy are skipped with a reason such as "UNK has no HAM7 class".
"""
from __future__ import annotations

# Importing the reader modules registers them, in this order (READERS keeps it).
from . import ham10000, isic, ph2, folder, dermamnist  # noqa: F401  (registration)
from .common import IMAGE_SUFFIXES, read_onehot_csv
from .dermamnist import npz_array_shape
from .ph2 import read_ph2_table
from .registry import READERS, ReaderSpec, detect_formats, list_readers, read_dataset, register_reader

__all__ = [
    "IMAGE_SUFFIXES",
    "READERS",
    "ReaderSpec",
    "detect_formats",
    "list_readers",
    "npz_array_shape",
    "read_dataset",
    "read_onehot_csv",
    "read_ph2_table",
    "register_reader",
]

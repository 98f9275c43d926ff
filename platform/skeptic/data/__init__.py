"""Skeptic's data layer: procedural shapes, sklearn digits, image folders and CIFAR as numpy
arrays; CIFAR and streamed image folders read by each trial from disk (skeptic.data.disk)."""

from skeptic.data.datasets import (
    DATASET_NAMES,
    MAX_DATA_BYTES,
    DataError,
    DataPlan,
    Dataset,
    data_hash,
    load_dataset,
    plan_dataset,
)
from skeptic.data.digits import DIGIT_NAMES, load_digits_arrays
from skeptic.data.disk import CIFAR, DiskArrays, FolderSource, image_loader, materialize
from skeptic.data.imagefolder import (
    IMAGE_EXTENSIONS,
    domain_root,
    labelled_files,
    load_domain_folder,
    load_imagefolder,
    scan_imagefolder,
    survey_imagefolder,
)
from skeptic.data.shapes import CLASS_NAMES, DOMAINS, Domain, class_counts, make_shapes
from skeptic.data.splits import stratified_split, stratified_subset, val_count

__all__ = [
    "CIFAR",
    "CLASS_NAMES",
    "DATASET_NAMES",
    "DIGIT_NAMES",
    "DOMAINS",
    "IMAGE_EXTENSIONS",
    "MAX_DATA_BYTES",
    "DataError",
    "DataPlan",
    "Dataset",
    "DiskArrays",
    "Domain",
    "FolderSource",
    "class_counts",
    "data_hash",
    "domain_root",
    "image_loader",
    "labelled_files",
    "load_dataset",
    "load_digits_arrays",
    "load_domain_folder",
    "load_imagefolder",
    "make_shapes",
    "materialize",
    "plan_dataset",
    "scan_imagefolder",
    "stratified_split",
    "stratified_subset",
    "survey_imagefolder",
    "val_count",
]

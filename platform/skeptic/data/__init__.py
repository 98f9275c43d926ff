"""Skeptic's data layer: procedural shapes, sklearn digits and image folders, as numpy arrays."""

from skeptic.data.datasets import (
    DATASET_NAMES,
    Dataset,
    dataset_hash,
    load_dataset,
    stratified_split,
    stratified_subset,
)
from skeptic.data.digits import DIGIT_NAMES, load_digits_arrays
from skeptic.data.imagefolder import (
    IMAGE_EXTENSIONS,
    domain_root,
    load_domain_folder,
    load_imagefolder,
    scan_imagefolder,
)
from skeptic.data.shapes import CLASS_NAMES, DOMAINS, Domain, make_shapes

__all__ = [
    "CLASS_NAMES",
    "DATASET_NAMES",
    "DIGIT_NAMES",
    "DOMAINS",
    "IMAGE_EXTENSIONS",
    "Dataset",
    "Domain",
    "dataset_hash",
    "domain_root",
    "load_dataset",
    "load_digits_arrays",
    "load_domain_folder",
    "load_imagefolder",
    "make_shapes",
    "scan_imagefolder",
    "stratified_split",
    "stratified_subset",
]

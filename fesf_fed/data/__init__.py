"""A site's plaintext images: decoding files, loading a configured source, splitting it."""

from fesf_fed.data.decode import IMAGE_SUFFIXES, UnreadableImage, image_from_pixels, read_image, to_channels
from fesf_fed.data.imageset import ImageSet, SkippedFile
from fesf_fed.data.sources import (
    DatasetParts,
    SourceCheck,
    check_source,
    data_location,
    load_dataset,
    load_dataset_parts,
    source_fingerprint,
)
from fesf_fed.data.split import SPLIT_VERSION, SiteSplit, official_split, site_split, split_key, stratified_split

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLIT_VERSION",
    "DatasetParts",
    "ImageSet",
    "SiteSplit",
    "SkippedFile",
    "SourceCheck",
    "UnreadableImage",
    "check_source",
    "data_location",
    "image_from_pixels",
    "load_dataset",
    "load_dataset_parts",
    "official_split",
    "read_image",
    "site_split",
    "source_fingerprint",
    "split_key",
    "stratified_split",
    "to_channels",
]

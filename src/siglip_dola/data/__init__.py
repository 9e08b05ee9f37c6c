"""Labelled image sets and retrieval sets in the formats researchers have: image folders
(ImageNet-style WordNet-id and numbered folders included), label files, clip_benchmark
webdataset folders, Hugging Face ``datasets``, the COCO / Flickr30k Karpathy files, and the
bundled demo sets.

One module per format; :func:`load_dataset` / :func:`load_retrieval_set` pick the format
from the ``--dataset`` spec (:mod:`siglip_dola.data.specs`). Images decode lazily to 8-bit
RGB (:mod:`siglip_dola.data.images`); an image that cannot be used is a counted, listed
skip (:class:`Skipped`), never a silent loss.
"""

from __future__ import annotations

from siglip_dola.data.bundled import (
    BUNDLED_CLASS_NAMES,
    BUNDLED_SETS,
    BUNDLED_TEMPLATES,
    bundled_model_dir,
    load_bundled_fashion_mnist,
)
from siglip_dola.data.classes import (
    ClassNames,
    class_name_warnings,
    read_class_names,
    read_classes,
)
from siglip_dola.data.folders import SPLIT_NAMES, load_image_folder
from siglip_dola.data.hf_datasets import load_hf_dataset
from siglip_dola.data.imagenet import IMAGENET_TABLE, imagenet_classes, is_wordnet_id
from siglip_dola.data.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    ImageError,
    Skipped,
    check_max_pixels,
    image_files,
    load_image,
    to_rgb,
)
from siglip_dola.data.imageset import ImageItems, ImageRef, ImageSet
from siglip_dola.data.label_files import LABEL_FILE_COLUMNS, load_label_file
from siglip_dola.data.retrieval_sets import RetrievalSet, load_karpathy_json
from siglip_dola.data.specs import (
    DEFAULT_SPLIT,
    FORMATS,
    RETRIEVAL_FORMATS,
    DataSpec,
    dataset_name,
    load_dataset,
    load_retrieval_set,
    parse_data_spec,
)
from siglip_dola.data.templates import read_template_file
from siglip_dola.data.wds import WebDatasetSource, load_wds

__all__ = [
    "BUNDLED_CLASS_NAMES",
    "BUNDLED_SETS",
    "BUNDLED_TEMPLATES",
    "DEFAULT_SPLIT",
    "FORMATS",
    "IMAGENET_TABLE",
    "IMAGE_EXTENSIONS",
    "LABEL_FILE_COLUMNS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "RETRIEVAL_FORMATS",
    "SPLIT_NAMES",
    "ClassNames",
    "DataSpec",
    "ImageError",
    "ImageItems",
    "ImageRef",
    "ImageSet",
    "RetrievalSet",
    "Skipped",
    "WebDatasetSource",
    "bundled_model_dir",
    "check_max_pixels",
    "class_name_warnings",
    "dataset_name",
    "image_files",
    "imagenet_classes",
    "is_wordnet_id",
    "load_bundled_fashion_mnist",
    "load_dataset",
    "load_hf_dataset",
    "load_image",
    "load_image_folder",
    "load_karpathy_json",
    "load_label_file",
    "load_retrieval_set",
    "load_wds",
    "parse_data_spec",
    "read_class_names",
    "read_classes",
    "read_template_file",
    "to_rgb",
]

"""Datasets: catalogs of product images, interactions, k-core, leave-one-out, layouts and the demo."""

from advrec_common.datasets.demo import DemoConfig, demo_attrs, demo_catalog, make_demo_dataset
from advrec_common.datasets.demo_images import DEMO_CATEGORIES, draw_product, make_product_images
from advrec_common.datasets.generic_layout import DroppedRowsWarning, load_generic_dataset
from advrec_common.datasets.images import (
    CatalogImageDataset,
    decode_image,
    load_catalog_images,
    resize_image,
    to_tensor,
    to_uint8,
)
from advrec_common.datasets.kcore import kcore_filter
from advrec_common.datasets.split import build_index, leave_one_out
from advrec_common.datasets.study_layout import load_study_dataset, write_study_dataset
from advrec_common.datasets.types import Catalog, Interactions, RecDataset

__all__ = [
    "DEMO_CATEGORIES",
    "Catalog",
    "CatalogImageDataset",
    "DemoConfig",
    "DroppedRowsWarning",
    "Interactions",
    "RecDataset",
    "build_index",
    "decode_image",
    "demo_attrs",
    "demo_catalog",
    "draw_product",
    "kcore_filter",
    "leave_one_out",
    "load_catalog_images",
    "load_generic_dataset",
    "load_study_dataset",
    "make_demo_dataset",
    "make_product_images",
    "resize_image",
    "to_tensor",
    "to_uint8",
    "write_study_dataset",
]

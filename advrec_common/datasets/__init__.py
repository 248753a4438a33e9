"""Datasets: catalogs of product images, interactions, k-core, leave-one-out, layouts and the demo."""

import importlib
from typing import Any

# name -> submodule; imported on first use so that `import advrec_common.datasets` (and the CLI)
# does not pull in torch
_EXPORTS = {
    "DemoConfig": "demo",
    "demo_attrs": "demo",
    "demo_catalog": "demo",
    "make_demo_dataset": "demo",
    "DEMO_CATEGORIES": "demo_images",
    "draw_product": "demo_images",
    "make_product_images": "demo_images",
    "Problem": "delimited",
    "parse_timestamp": "delimited",
    "CategoryColumns": "generic_layout",
    "DroppedRowsWarning": "generic_layout",
    "InteractionColumns": "generic_layout",
    "load_generic_dataset": "generic_layout",
    "CatalogImageDataset": "images",
    "Fit": "images",
    "decode_image": "images",
    "iter_catalog_batches": "images",
    "load_catalog_images": "images",
    "read_image_header": "images",
    "resize_image": "images",
    "to_tensor": "images",
    "to_uint8": "images",
    "kcore_filter": "kcore",
    "build_index": "split",
    "leave_one_out": "split",
    "PreflightReport": "preflight",
    "check_generic_dataset": "preflight",
    "load_study_dataset": "study_layout",
    "write_study_dataset": "study_layout",
    "Catalog": "types",
    "Interactions": "types",
    "RecDataset": "types",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "DEMO_CATEGORIES",
    "Catalog",
    "CatalogImageDataset",
    "CategoryColumns",
    "DemoConfig",
    "DroppedRowsWarning",
    "Fit",
    "InteractionColumns",
    "Interactions",
    "PreflightReport",
    "Problem",
    "RecDataset",
    "build_index",
    "check_generic_dataset",
    "decode_image",
    "demo_attrs",
    "demo_catalog",
    "draw_product",
    "iter_catalog_batches",
    "kcore_filter",
    "leave_one_out",
    "load_catalog_images",
    "load_generic_dataset",
    "load_study_dataset",
    "make_demo_dataset",
    "make_product_images",
    "parse_timestamp",
    "read_image_header",
    "resize_image",
    "to_tensor",
    "to_uint8",
    "write_study_dataset",
]

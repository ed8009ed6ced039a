"""Data for the embedded demo: a synthetic COCO-format shape dataset."""

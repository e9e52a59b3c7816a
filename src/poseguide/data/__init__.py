"""Datasets: sources (hub parquet, JSONL manifest, COCO), validation, preprocessing, caches."""

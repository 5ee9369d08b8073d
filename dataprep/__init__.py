"""Preparing prompt sets: convert published data sets, deduplicate, decontaminate, select.

The command line is `acerl data` (see `dataprep/__main__.py` and docs/data.md).
"""

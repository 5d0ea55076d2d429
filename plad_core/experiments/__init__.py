"""Experiments over the pipeline: the table of systems and seeds, and the data-scale series."""

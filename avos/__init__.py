"""Automatic video object segmentation (DAVIS-16, YouTube-Objects, MoCA): the test protocol, the
runs that write outputs and metrics (:mod:`avos.inference`); the scripts at the top level call it."""

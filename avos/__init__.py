"""Automatic video object segmentation (DAVIS-16, YouTube-Objects, MoCA): the original's test protocol
(:mod:`avos.protocol`), the model a checkpoint needs (:mod:`avos.model`), the runs that write outputs
and metrics (:mod:`avos.inference`); the scripts at the top level call them."""

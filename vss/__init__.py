"""Video semantic segmentation (VSS) on VSPW with MED-VT.

The original MED-VT repository has no VSS code; this package builds it from the papers and the
shared model. It holds no model code (the model is :class:`models.MEDVT` with the
``medvt_swinb_vss`` preset, see :mod:`vss.config`), only the task criterion (:mod:`vss.losses`),
the VSPW metrics (:mod:`vss.metrics`) and the scripts ``vss/train_medvt_vss.py`` and
``vss/inference_medvt_vss.py``. The loader is :mod:`datasets.vspw`.
"""

"""Actor-action segmentation on A2D with MED-VT (spec a2d §A): loss, metrics, train and inference scripts."""

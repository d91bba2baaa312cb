"""The lung segmentation model: reference labels, training, evaluation and model card."""

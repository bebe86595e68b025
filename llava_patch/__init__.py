"""RADIO as the LLaVA-1.5 vision tower: model assembly, data, training, evaluation."""

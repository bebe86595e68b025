"""Multi-teacher distillation of RADIO on DeepSpeed."""

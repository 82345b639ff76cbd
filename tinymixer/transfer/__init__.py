"""Pretrained models: fine-tuning from a checkpoint, few-shot linear evaluation, conversion to and from other
layouts."""

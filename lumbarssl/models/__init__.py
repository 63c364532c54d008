"""Encoders, heads, pooling, the disc classifier, the 2.5D localizer and safe checkpoints."""

__all__: list[str] = []

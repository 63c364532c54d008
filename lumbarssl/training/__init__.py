"""A thin trainer, device helpers, atomic checkpoints and distributed utilities."""

__all__: list[str] = []

"""Losses of the paper: multi-positive NT-Xent (Eq. 3-5) and weighted focal loss (Eq. 2)."""

__all__: list[str] = []

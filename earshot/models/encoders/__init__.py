"""Encoders: ``(x (B, T, D), lens (B,)) -> (h (B, T', H) zero past h_lens, h_lens (B,))``.

Each has ``output_dim`` and ``output_lengths(lens)`` (T' without running the network)
and is built as ``cls(cfg, input_dim)`` from its own config dataclass; the name tables
are in ``earshot.models.registry``.
"""

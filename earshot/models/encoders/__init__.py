"""Encoders: ``(x (B, T, D), lens (B,)) -> (h (B, T', H) zero past h_lens, h_lens (B,))``.

Each is an ``Encoder`` (``base.py``: the contract and its optional capabilities), one
module with its config dataclass, and one entry in ``earshot.choices.ENCODERS``.
"""

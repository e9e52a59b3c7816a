"""The mini world's base: a small SD-architecture pipeline trained here from scratch.

:mod:`~poseguide.base.config` (the typed config and its hash), :mod:`~poseguide.base.parts`
(data, models, losses), :mod:`~poseguide.base.train` (the resumable two-phase training and the
pipeline export), :mod:`~poseguide.base.builtin` (``builtin:mini-sd``: cached, or shipped).
"""

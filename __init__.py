"""alarm: the training side of ALARM (Audio-Language Alignment for Reasoning Models).

The repository root is the ``alarm`` import package (see ``pyproject.toml``): ``alarm.pipeline`` (the
feature cache and everything the stages share), ``alarm.rephrase`` (self-rephrased targets),
``alarm.trainer`` (adapters and fusion, trained from the cache), and ``alarm.cli`` and
``alarm.demo`` on top. ARCHITECTURE.md draws the layers.
"""

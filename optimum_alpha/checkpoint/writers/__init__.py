"""Checkpoint writers: one plug-in module per ``save_pretrained(format=...)`` value.

Add one by writing ``optimum_alpha/checkpoint/writers/<name>.py`` with a :class:`CheckpointWriter`
subclass decorated ``@register_writer("<name>")`` (contract in :mod:`.base`); nothing else lists it.
"""

from .base import CheckpointWriter, get_writer, register_writer, writer_for_quant_method, writer_names

__all__ = ["CheckpointWriter", "get_writer", "register_writer", "writer_for_quant_method", "writer_names"]

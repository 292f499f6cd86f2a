"""Within-layer pruning methods (which weights go), one plug-in module each.

Add one by writing ``optimum_alpha/pruning/<name>.py`` with a :class:`LayerPruner` subclass decorated
``@register_pruner("<name>")``; the registry imports the plug-in modules itself (see :mod:`optimum_alpha.plugins`).
"""

from .base import PRUNERS, LayerPruner, get_pruner_class, pruner_classes, pruner_names, register_pruner

__all__ = ["PRUNERS", "LayerPruner", "get_pruner_class", "pruner_classes", "pruner_names", "register_pruner"]

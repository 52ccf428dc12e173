"""The Spaces object layout, for the orchestrator: templates/wal/spaces_layout.py, the very
file the droplet programs import beside them, executed from there. Its docstring says
what the layout is and why it lives with the droplet programs; this module only loads
it, so `from tasks import layout` then `layout.wal_key(stack, system_id, name)`.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tasks.render import TEMPLATES

SOURCE = TEMPLATES / "wal" / "spaces_layout.py"


def _load() -> ModuleType:
    name = "lifeboat_spaces_layout"  # not `spaces_layout`: never shadows a droplet's copy
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SOURCE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the Spaces layout from {SOURCE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_layout = _load()
__all__ = list(_layout.__all__)
globals().update({name: getattr(_layout, name) for name in __all__})

"""User code named by import path — a reward function (``data.reward``), a task class (``data.task``, eval's
``task``, ``t1 grade --task``): ``package.module:name`` (a module on the Python path) or
``path/to/file.py:name``. A mistake is one :class:`t1.config.ConfigError` naming the field, never a traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from t1.config import ConfigError


def is_reference(text: str) -> bool:
    """Whether ``text`` names user code (``module:name``) rather than a built-in name or an address."""
    return ":" in text and not text.startswith(("http://", "https://", "judge:"))


def load_object(ref: str, field: str) -> Any:
    """The object ``ref`` names (``module:name`` or ``file.py:name``); errors name ``field``."""
    module_name, sep, name = ref.rpartition(":")
    if not sep or not module_name or not name.isidentifier():
        raise ConfigError(f"{field}: expected package.module:name or path/file.py:name (got {ref!r})")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"{field}: {path}: no such file")
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            key = f"t1_user_{digest}_{path.stem}"
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module  # found again by name (pickling by reference, a second load)
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[key]
                    raise
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # the user's module: any import-time failure is a config error, one line
        raise ConfigError(f"{field}: cannot import {module_name!r}: {type(e).__name__}: {e}"[:500]) from None
    if not hasattr(module, name):
        raise ConfigError(f"{field}: {module_name!r} has no {name!r}")
    return getattr(module, name)

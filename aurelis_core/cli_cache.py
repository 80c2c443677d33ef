"""Deprecated: moved to :mod:`aurelis_core.tools.cli_cache`, the application wing; import it from there.

This name stays for one release. It is the very same module (every name, private ones included, and
monkeypatching work as before); importing it by this name warns.
"""

import sys
import warnings

from .tools import cli_cache as _moved
from .tools.cli_cache import *  # noqa: F403  (the public names, for type checkers reading this module)

warnings.warn(
    "aurelis_core.cli_cache moved to aurelis_core.tools.cli_cache; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
# The old name is an alias of the new module, not a copy: one module object, whichever name imported it.
sys.modules[__name__] = _moved

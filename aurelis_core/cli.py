"""Deprecated: moved to :mod:`aurelis_core.tools.cli`, the application wing; import it from there.

This name stays for one release. It is the very same module (every name, private ones included, and
monkeypatching work as before); importing it by this name warns.
"""

import sys
import warnings

from .tools import cli as _moved
from .tools.cli import *  # noqa: F403  (the public names, for type checkers reading this module)

if __name__ == "__main__":  # ``python -m aurelis_core.cli``, the old spelling of ``python -m aurelis_core.tools.cli``
    warnings.warn(
        "python -m aurelis_core.cli is deprecated: run `aurelis` or python -m aurelis_core.tools.cli",
        DeprecationWarning,
        stacklevel=1,
    )
    raise SystemExit(_moved.main())

warnings.warn(
    "aurelis_core.cli moved to aurelis_core.tools.cli; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
# The old name is an alias of the new module, not a copy: one module object, whichever name imported it.
sys.modules[__name__] = _moved

"""The application wing: what is built *on* Aurelis rather than inside it.

- :mod:`aurelis_core.tools.cli`: the ``aurelis`` command (``python -m aurelis_core.tools.cli`` runs it too);
- :mod:`aurelis_core.tools.cli_cache`: ``aurelis cache stats|warm|clear``;
- :mod:`aurelis_core.tools.replay`: send a recorded workload through a configured pipeline;
- :mod:`aurelis_core.tools.options_reference`: the option reference of every plugin and core table, read from
  the option classes (``aurelis config options``, the documentation's option tables);

The performance report they print is the core's (:mod:`aurelis_core.report`): a running pipeline builds the same
one over its live traffic (``pipeline.report()``).

These modules use the public API only (``aurelis_core``, ``aurelis_core.plugin``, ``aurelis_core.config``,
``aurelis_core.report``, ``aurelis_core.testing``), as any application would, and nothing in the core imports
them: a test reads their imports and the core's. Importing this package imports none of them.
"""

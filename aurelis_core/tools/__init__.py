"""The application wing: what is built *on* Aurelis rather than inside it.

- :mod:`aurelis_core.tools.cli`: the ``aurelis`` command (``python -m aurelis_core.tools.cli`` runs it too);
- :mod:`aurelis_core.tools.cli_cache`: ``aurelis cache stats|warm|clear``;
- :mod:`aurelis_core.tools.replay`: send a recorded workload through a configured pipeline;
- :mod:`aurelis_core.tools.report`: the performance report of a pipeline's samples (text, JSON, HTML);
  :mod:`~aurelis_core.tools.report_html` its HTML page, drawn with :mod:`~aurelis_core.tools.charts`;
  :mod:`~aurelis_core.tools.units` how both write figures.

These modules use the public API only (``aurelis_core``, ``aurelis_core.plugin``, ``aurelis_core.config``,
``aurelis_core.testing``), as any application would, and nothing in the core imports them: a test reads their
imports and the core's. Importing this package imports none of them.
"""

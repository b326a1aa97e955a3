"""The typed schema of every config, checked before any work starts.

- :mod:`nnp.config.schema`: one dataclass per config group and architecture,
  every key with its type and allowed values, and ``nnp train``'s command;
  the other commands' in :mod:`~nnp.config.schema_inference` (evaluate,
  predict), :mod:`~nnp.config.schema_dynamics` (md, relax) and
  :mod:`~nnp.config.schema_active` (active_learn); :mod:`nnp.config.commands`
  says which class checks which command and which ``conf/`` folder;
- :mod:`nnp.config.validate`: the checker (types, ranges, then relations
  between keys), one line per refusal;
- :mod:`nnp.config.compose`: Hydra's composition of a command line, checked
  (``nnp train ...`` and each job of a ``-m`` sweep);
- :mod:`nnp.config.options`: the same checks for the commands that take plain
  ``key=value`` options (``nnp export``, ``nnp data``).

The package imports neither torch nor Lightning: a bad value is refused in
well under a second.
"""

from nnp.config.validate import ConfigError, check_config

__all__ = ["ConfigError", "check_config"]

"""User-facing errors and the exit codes of the ``nnp`` command.

Anything a user can cause (a missing file, a bad key, NaN labels, an unknown
element) raises :class:`NNPError` with one line naming the file and the item.
The CLI prints that line and exits with the error's ``exit_code``; it never
shows a traceback for it.

Exit codes (the README's table is this one):

====  ===========================================================
0     success
1     internal error (a bug in nnp: a traceback is printed)
2     bad input: config, files, model, arguments (:class:`NNPError`)
3     a run stopped by a safety check (MD blow-up: non-finite values,
      force or temperature limit, atoms too close) (:class:`SafetyStop`)
4     an MD run stopped because the committee's uncertainty passed
      ``md.uncertainty.threshold`` with ``action=stop`` (:class:`UncertaintyStop`)
75    stopped early with a checkpoint or restart file (preemption, SIGTERM,
      a wall-time limit such as ``md.max_time``): rerun the same command to continue
130   interrupted (Ctrl-C)
====  ===========================================================
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_SAFETY_STOP = 3
EXIT_UNCERTAINTY_STOP = 4
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: try again, the work so far is saved
EXIT_INTERRUPTED = 130


class NNPError(Exception):
    """An error caused by the user's input, reported as a single line."""

    exit_code: int = EXIT_BAD_INPUT


class SafetyStop(NNPError):
    """A simulation stopped by a safety check; what was written so far is kept."""

    exit_code = EXIT_SAFETY_STOP


class UncertaintyStop(NNPError):
    """MD stopped at the first frame whose committee uncertainty passed the threshold."""

    exit_code = EXIT_UNCERTAINTY_STOP

"""The two kinds of failure in data preparation.

- :class:`PrepError`: the job cannot go on (a missing corpus root, a malformed list file, bad
  options). The message names the file (and line) at fault; the command-line tools print it and
  exit with status 1.
- :class:`ItemError`: one utterance is unusable (an undecodable video, a blank mouth track, ...).
  The job records it in ``bad_items.tsv`` with this message as the reason and goes on.
"""


class PrepError(Exception):
    """A fatal data-preparation error; the message names the path (and line) at fault."""


class ItemError(Exception):
    """One item is bad; the message is the reason written to bad_items.tsv."""

"""Recognising a full disk (or quota) among the errors a run can raise.

A full disk is not a bug of the run: the user frees space and reruns the same
command. Every writer in `io_utils` is atomic and every stage resumes from its
last checkpoint, so the entry points turn such an error into one line and
exit status 2 instead of a traceback. TensorFlow's checkpoint and file ops
report the same condition as an `OpError` whose message carries the C
library's text, so both forms are recognised, anywhere in the exception chain
(Keras and absl re-raise with `from`).
"""

import errno

#: errno values that mean "the filesystem refused to store more bytes".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: strerror texts of those errnos, as TensorFlow's C++ file system quotes them.
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def _chain(error):
  """`error` and every exception it was raised from or during, each once."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_full_message(error):
  """One line for an error caused by a full disk or quota; None for any other error.

  Args:
    error: the exception that stopped the run.

  Returns:
    The message for the user (what happened, where, and what to do), or None.
  """
  for cause in _chain(error):
    if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
      where = f" writing {cause.filename}" if cause.filename else ""
      return (f"{cause.strerror or 'no space left on device'}{where}; free some space and "
              "rerun the same command (finished stages and the last checkpoint are kept, "
              "no file was left half-written)")
    text = " ".join(str(cause).split())
    for needle in DISK_FULL_TEXTS:
      if needle in text:
        return (f"{needle} ({type(cause).__name__}: {text[:160]}); free some space and rerun "
                "the same command (finished stages and the last checkpoint are kept, no file "
                "was left half-written)")
  return None

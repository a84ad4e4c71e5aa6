"""One writer per run directory: an OS file lock on `<run>/.lock`.

A run (and `tf-srkd-export --run_dir`, `tf-srkd-subset`) holds an exclusive
`flock` on the directory's `.lock` file while it writes there. The kernel drops
the lock when the process dies, SIGKILL included, so a crashed run never leaves a
stale lock and its directory can be resumed at once. A second process on the same
directory fails to take it, reads the holder's pid from the file and stops with
one line, before it writes anything.

The lock is taken as late as possible (`acquire`, right before the first write of
the run), so that a run refused for bad flags, data or models creates nothing, not
even the lock; a directory that holds another run's settings is refused after it.
On a filesystem without file locks the run goes on unlocked, with a warning.
"""

import errno
import fcntl
import logging
import os
from typing import Optional
from tf_srkd.errors import RunDirBusy  # pylint: disable=unused-import  (raised here; see errors)

LOCK_NAME = ".lock"
#: flock errors that mean the filesystem has no locks, not that another process holds one.
_UNSUPPORTED = tuple(getattr(errno, name) for name in ("ENOSYS", "ENOLCK", "EOPNOTSUPP",
                                                       "ENOTSUP") if hasattr(errno, name))


class RunDirLock:
  """The exclusive lock of one run directory (not taken until `acquire`).

  Args:
    directory: the run directory (created by `acquire` when absent).
    what: how messages name the directory (a flag such as "--output_dir").
  """

  def __init__(self, directory: str, what: str = "--output_dir"):
    self.directory = directory
    self.what = what
    self._fd: Optional[int] = None

  @property
  def path(self) -> str:
    return os.path.join(self.directory, LOCK_NAME)

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self):
    """Takes the lock (again, after the directory was moved aside and made anew).

    Raises:
      RunDirBusy: another process holds it.
    """
    if self._fd is not None and self._still_ours():
      return
    self.release()
    os.makedirs(self.directory, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in _UNSUPPORTED:  # Some network filesystems (NFS, Lustre, FUSE) have none.
          logging.warning("%s: this filesystem has no file locks (%s); running without the "
                          "one-writer check", self.directory, os.strerror(e.errno))
          return
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise RunDirBusy(self._busy_message()) from e
      self._fd = fd
      if self._still_ours():  # Not moved aside or replaced between open and flock.
        break
      self.release()
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())

  def release(self):
    """Drops the lock (the file stays: removing it would race with a new holder)."""
    if self._fd is not None:
      try:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
      finally:
        os.close(self._fd)
        self._fd = None

  def _still_ours(self) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
    except OSError:
      return False

  def _busy_message(self) -> str:
    try:
      with open(self.path, encoding="ascii") as f:
        pid = f.read().strip() or "unknown"
    except OSError:
      pid = "unknown"
    return (f"{self.what}={self.directory}: another process (pid {pid}) is writing this run "
            "directory; wait for it to finish, or use another directory")

  def close(self):
    """`release` (for `contextlib.closing`)."""
    self.release()

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False

"""Helpers for the thin Snakemake scripts: logging to the rule's log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def log_to(path):
    """Send stdout, stderr (tqdm progress) and the ``logging`` root to ``path``.

    Used by every workflow script: ``with log_to(snakemake.log[0]): ...``. Exceptions
    are written to the log with their traceback and re-raised.
    """
    if path is None:
        yield
        return
    path = Path(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=fh)
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            sys.stdout, sys.stderr = old_out, old_err

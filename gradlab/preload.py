"""What the local executor's fork server loads once, so that every worker forked from it starts warm.

On Linux ``workers`` starts its worker processes with multiprocessing's ``forkserver``
method and names this module in ``set_forkserver_preload``: the server, a fresh
interpreter, imports it before it forks any worker, and each worker inherits what it
loaded instead of loading it again: torch, numpy and the modules a worker trains with
(about 2 s on a busy 2-core machine), and ``torch._dynamo``, which torch imports the
first time an optimizer is built (``Optimizer.add_param_group`` is wrapped in
``torch._disable_dynamo``; about 1.6 s more).

Nothing here runs a parallel torch op: a process forked after torch started its
OpenMP thread pool can hang in the first parallel region of the child (that is why
workers are never forked from the driver). So the warm-up builds an optimizer over one
element and never steps it, and the server forks its workers single-threaded
(``tests/test_sweeps.py`` checks).
"""

import contextlib
import ctypes
import gc
import os
import signal
import sys

FORK_SERVER = "from multiprocessing.forkserver import main"  # how CPython starts the server (its -c command)

# The fork server's pid, in it and in every worker forked from it (None elsewhere): a worker checks
# that its parent is still this process (``workers._exit_with``).
SERVER = os.getpid() if any(arg.startswith(FORK_SERVER) for arg in sys.orig_argv) else None


def _end_with_parent() -> None:
    """In the fork server: the kernel kills it when its parent, the driver, ends, even by ``kill -9``.

    Its workers end with it in turn (``workers._exit_with``). The server would otherwise
    outlive the driver: it stops only when every holder of its "alive" pipe has closed it,
    and each worker holds a copy. If the driver ended before this took effect, the server
    sees that pipe closed and stops before it forks anything.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


if SERVER is not None:
    _end_with_parent()
    import gradlab.workers  # standard library only

    sys.excepthook = gradlab.workers.quiet_when_orphaned  # the server's children, orphaned, print nothing

import torch  # noqa: E402  (after the line above: the import takes seconds, the driver may end meanwhile)

import gradlab.config  # noqa: E402, F401  (a worker unpickles the runs it is sent: config.Run)
import gradlab.training  # noqa: E402, F401

torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo; one element, no step

# What the server loaded lives as long as every worker: freezing it keeps each worker's garbage
# collections off those objects (and their memory pages shared with the server), as the gc docs
# advise for a process that forks without exec.
gc.freeze()

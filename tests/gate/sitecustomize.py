"""Test-only: hold a ``gradlab run`` at a known point, so a fault test waits for an event, never for time.

A test puts this folder first on ``PYTHONPATH`` and names a folder in ``GRADLAB_TEST_GATE``; every
Python process of the sweep (the driver, the fork server and the workers it forks, spawned workers)
imports this module at start-up (``site`` imports ``sitecustomize``), which wraps
``gradlab.workers.train_run``. Before a run trains, the process writes ``<gate>/<run id>.<pid>.started``
(the event the test waits for) and then waits for a shared ``flock`` on ``<gate>/gate``, which the test
holds exclusively (``tests/test_faults.py``, ``Gate``). Releasing the lock lets every held run go on.
Importing ``gradlab.workers`` costs only the standard library (it imports torch in ``train_run``).
"""

import os

if os.environ.get("GRADLAB_TEST_GATE"):
    import fcntl
    from pathlib import Path

    import gradlab.workers

    _train_run = gradlab.workers.train_run

    def _gated(run, progress=None):
        hold = os.environ.get("GRADLAB_TEST_GATE_HOLD")  # comma-separated parts of the run ids to hold; unset: all
        if hold and not any(part in run.id for part in hold.split(",")):
            return _train_run(run, progress)
        gate = Path(os.environ["GRADLAB_TEST_GATE"])
        (gate / f"{run.id}.{os.getpid()}.started").touch()
        with open(gate / "gate", "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)  # blocks while the test holds the gate
        return _train_run(run, progress)

    gradlab.workers.train_run = _gated

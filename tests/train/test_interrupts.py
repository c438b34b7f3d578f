"""Stop signals: the first SIGINT or SIGTERM asks for a checkpoint at the next step; a second
Ctrl-C stops at once, a repeated SIGTERM (Slurm and torchrun both sending it) does not."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from eqmcli.train.interrupts import stop_on_signals

TWO_SIGTERMS = """
import signal
from eqmcli.train.interrupts import stop_on_signals
with stop_on_signals() as request:
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)
    print("still running after", request.name)
"""


def test_a_repeated_sigterm_keeps_the_request_and_the_process() -> None:
    done = subprocess.run([sys.executable, "-c", TWO_SIGTERMS], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # -15: the second SIGTERM ended it
    assert done.stdout.strip() == "still running after SIGTERM"


def test_a_second_ctrl_c_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), stop_on_signals() as request:
        signal.raise_signal(signal.SIGINT)
        assert request.name == "SIGINT"
        signal.raise_signal(signal.SIGINT)


def test_ctrl_c_after_a_sigterm_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), stop_on_signals() as request:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert request.name == "SIGTERM"


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before

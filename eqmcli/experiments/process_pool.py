"""Run tasks (each a list of commands run one after another) in N parallel slots.

Each child process runs in its own session, so a Ctrl-C at the terminal reaches only this
process; `run_tasks` passes every SIGINT / SIGTERM it receives on to the running children
exactly once (a training checkpoints at its next step boundary and exits; a second Ctrl-C
stops it at once), starts nothing new, waits for the children and returns the signal's
name. A task's output (stdout and stderr) is appended to its log file.

On Linux each child also asks the kernel for SIGTERM when this process dies
(`PR_SET_PDEATHSIG`), so a `kill -9` of the sweep leaves no training running as an orphan:
the child checkpoints at its next step boundary and exits, as on a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Task:
    """Commands to run in order in one slot; the first failing one ends the task.

    After `run_tasks`: `return_code` of the last command run (None: never started),
    `seconds` of wall time, `finished` whether every command ran and returned 0.
    """

    name: str
    commands: list[list[str]]
    log: Path
    return_code: int | None = None
    seconds: float = 0.0
    finished: bool = False
    _next: int = field(default=0, repr=False)


@dataclass
class _Running:
    task: Task
    process: subprocess.Popen
    slot: int
    started: float


@contextlib.contextmanager
def _forwarded_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Call `on_signal(signum)` for SIGINT/SIGTERM while inside; the old handlers after."""
    previous = {s: signal.signal(s, lambda signum, frame: on_signal(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when its parent dies (Linux);
    None elsewhere. A parent that died before the call is caught by comparing the PID."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def request() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return request


def _start(task: Task, slot: int, env_for_slot: Callable[[int], dict[str, str]]) -> _Running:
    command = task.commands[task._next]
    task._next += 1
    task.log.parent.mkdir(parents=True, exist_ok=True)
    with task.log.open("ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env_for_slot(slot), start_new_session=True, preexec_fn=die_with_parent(),
        )
    return _Running(task, process, slot, time.perf_counter())


def run_tasks(
    tasks: list[Task],
    slots: int,
    env_for_slot: Callable[[int], dict[str, str]],
    on_done: Callable[[Task], None] | None = None,
    on_start: Callable[[Task], None] | None = None,
) -> str | None:
    """Run `tasks` at most `slots` at a time; returns the stop signal's name, if any.

    `env_for_slot(slot)` gives the environment of a process in slot 0..slots-1;
    `on_start(task)` is called when a task's first command starts, `on_done(task)` as
    each task ends (finished, failed or stopped).
    """
    pending = deque(task for task in tasks if task.commands)
    running: list[_Running] = []
    stop: list[int] = []

    def forward(signum: int) -> None:
        stop.append(signum)
        for item in running:
            with contextlib.suppress(ProcessLookupError):
                item.process.send_signal(signum)

    def launch(task: Task, slot: int) -> None:
        running.append(_start(task, slot, env_for_slot))
        if stop:  # the signal came while the process was being started
            with contextlib.suppress(ProcessLookupError):
                running[-1].process.send_signal(stop[0])

    with _forwarded_signals(forward):
        while running or (pending and not stop):
            free = sorted(set(range(slots)) - {item.slot for item in running})
            while pending and free and not stop:
                launch(pending.popleft(), free.pop(0))
                if on_start is not None:
                    on_start(running[-1].task)
            time.sleep(POLL_SECONDS)
            for item in [r for r in running if r.process.poll() is not None]:
                running.remove(item)
                task = item.task
                task.return_code = item.process.returncode
                task.seconds += time.perf_counter() - item.started
                more = task._next < len(task.commands)
                if task.return_code == 0 and more and not stop:
                    launch(task, item.slot)
                    continue
                task.finished = task.return_code == 0 and not more
                if on_done is not None:
                    on_done(task)
    return signal.Signals(stop[0]).name if stop else None

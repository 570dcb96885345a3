"""Lower a whole process's CPU priority, so that it yields to the work it shares cores with.

A nice value alone does not do it on Linux: with `kernel.sched_autogroup_enabled` (the
default on desktop and many server kernels) each session is a scheduling group of its
own, and groups share the CPU equally whatever the nice values of the processes inside
(measured: two actors and the trainer got ~63 % of a core each). So a process that leads
its own session (a `cartridge up` worker, a container's main process) also sets its
group's nice, through `/proc/self/autogroup`; one that does not leaves the group alone
(it is the shell's, and everything else started from it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(niceness: int, what: str) -> None:
    """Raise this process's nice value to `niceness` (0: leave it), and its autogroup's
    when it leads its session. Needs no privileges; where unsupported it logs and runs on."""
    if niceness <= 0:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < niceness:  # already lower: lowering it back needs privileges
            os.setpriority(os.PRIO_PROCESS, 0, niceness)  # this thread; threads started later inherit it
    except (AttributeError, OSError) as exc:
        log.warning("could not lower %s's CPU priority: %s", what, exc)
        return
    grouped = ""
    if os.getsid(0) == os.getpid() and AUTOGROUP.exists():
        try:
            AUTOGROUP.write_text(str(niceness))
            grouped = " (and its scheduler autogroup's)"
        except OSError as exc:
            log.warning("could not set %s's autogroup nice: %s; it gets an equal share of the CPU", what, exc)
    log.info("%s runs at nice %d%s: it yields the CPU to the work it shares it with", what, niceness, grouped)

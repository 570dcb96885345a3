"""Lowering a process's CPU priority (`shared.priority`), in real child processes: the
nice value always, the scheduler autogroup's only for a process that leads its session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A process in the kernel's default autogroup (a session no one started with setsid, as
# under some CI runners) reads /proc/self/autogroup as empty: its group is then None.
CHILD = """
import json, os
from pathlib import Path
from shared.priority import lower_priority
lower_priority({niceness}, "the test child")
group = Path("/proc/self/autogroup")
words = group.read_text().split() if group.exists() else []
print(json.dumps({{"nice": os.getpriority(os.PRIO_PROCESS, 0), "group": words[-1] if words else None}}))
"""


def child(niceness: int, new_session: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(niceness=niceness)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=new_session)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no scheduler autogroups on this kernel")
def test_a_session_leader_lowers_its_autogroup_and_a_member_leaves_it_alone():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    own = Path("/proc/self/autogroup").read_text()
    assert child(12, new_session=True) == {"nice": max(base, 12), "group": "12"}
    member = child(12, new_session=False)  # in our session's group: the group is not its to change
    assert member["nice"] == max(base, 12) and Path("/proc/self/autogroup").read_text() == own
    assert child(0, new_session=True) == {"nice": base, "group": "0"}  # 0: nothing changed

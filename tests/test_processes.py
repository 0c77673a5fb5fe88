"""The process seam (:class:`mudi.runtime.Processes`): each process takes items i, i+n, ...;
the shares are disjoint and complete and merge back in order; two real CPU processes agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from mudi.runtime import Processes, processes

SRC = Path(__file__).resolve().parents[1] / "src"


class StandIn(Processes):
    """A process of a group whose other members' shares are given (no torch.distributed)."""

    def __init__(self, index: int, count: int, parts: dict[int, list]):
        super().__init__(index, count)
        object.__setattr__(self, "parts", parts)

    def gather(self, mine: list) -> list[list]:
        return [list(mine) if i == self.index else self.parts[i] for i in range(self.count)]


def test_shares_are_disjoint_complete_and_merge_in_order():
    items = list(range(11))
    for n in (1, 2, 3, 4):
        shares = [Processes(i, n).share(items) for i in range(n)]
        assert sorted(x for s in shares for x in s) == items
        assert shares[0][:2] == ([0, n] if n < 11 else [0])
        parts = {i: s for i, s in enumerate(shares)}
        for i in range(n):
            assert StandIn(i, n, parts).merge(shares[i]) == items


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    p = processes()
    assert (p.index, p.count, p.is_main) == (0, 1, True)
    assert p.share([1, 2, 3]) == [1, 2, 3] and p.merge([1, 2]) == [1, 2]
    p.wait()  # no group: no-op


def test_device_is_the_process_gpu():
    assert Processes(1, 2, local_index=1).device(torch.device("cuda")) == torch.device("cuda", 1)
    assert Processes(1, 2, local_index=1).device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # asked explicitly
    assert Processes(0, 1).device(torch.device("cuda")) == torch.device("cuda")
    assert Processes(1, 2, local_index=1).device(torch.device("cpu")) == torch.device("cpu")


SCRIPT = """
import json
from mudi.runtime import processes
p = processes()
mine = p.share(list(range(7)))
print(json.dumps({"index": p.index, "count": p.count, "mine": mine, "all": p.merge([x * 10 for x in mine])}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], n: int = 2, timeout: float = 300, cwd=None) -> list[subprocess.CompletedProcess]:
    """Run ``python args`` as ``n`` CPU processes of one group (the environment accelerate launch sets)."""
    port = str(_free_port())
    procs = []
    for rank in range(n):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_cpu_processes_split_and_gather():
    results = launch(["-c", SCRIPT])
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    got = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
    assert [g["index"] for g in got] == [0, 1] and {g["count"] for g in got} == {2}
    assert got[0]["mine"] == [0, 2, 4, 6] and got[1]["mine"] == [1, 3, 5]
    assert got[0]["all"] == got[1]["all"] == [0, 10, 20, 30, 40, 50, 60]

"""`mudi evaluate` / `compare` over several processes (accelerate launch): each scores images i,
i+n, ...; the main process writes one folder with every image once, in order, the same as one
process writes. Stand-in process groups (threads) and two real CPU processes."""

from __future__ import annotations

import json
import threading

import pytest

from mudi.errors import MudiError
from mudi.runtime import Processes
from test_evaluate import GOOD, ONE, THREE, TWICE, _config, _fake_models, saved_set, sset, write_generation  # noqa: F401
from test_processes import launch


class ThreadGroup:
    """``n`` stand-in processes run as threads; gather/wait go through a barrier."""

    def __init__(self, n: int):
        self.n = n
        self.slots: list = [None] * n
        self.barrier = threading.Barrier(n, timeout=60)

    def member(self, index: int) -> Processes:
        group = self

        class Member(Processes):
            def gather(self, mine):
                group.slots[self.index] = list(mine)
                group.barrier.wait()
                out = list(group.slots)
                group.barrier.wait()
                return out

            def wait(self):
                group.barrier.wait()

        return Member(index, group.n)

    def run(self, fn) -> list:
        """``fn(processes)`` on every member at once; each one's result (or exception)."""
        out: list = [None] * self.n

        def body(i):
            try:
                out[i] = fn(self.member(i))
            except BaseException as exc:  # collected for the test to inspect
                out[i] = exc

        threads = [threading.Thread(target=body, args=(i,)) for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return out


IMAGES = [GOOD, TWICE, ONE, THREE, GOOD, TWICE, GOOD]


@pytest.mark.parametrize("n", [2, 3])
def test_split_evaluation_writes_what_one_process_writes(saved_set, tmp_path, n):
    from mudi.evaluate import evaluate

    g = write_generation(tmp_path / "G", IMAGES)
    alone = evaluate(_config(saved_set, g, tmp_path / "one"), models=_fake_models())
    detectors = []

    def one_process(procs):
        models = _fake_models()
        detectors.append(models.detector)
        return evaluate(_config(saved_set, g, tmp_path / "split"), models=models, processes=procs)

    evs = ThreadGroup(n).run(one_process)
    assert not [e for e in evs if isinstance(e, BaseException)], evs
    # every process scored only its share, and together every image once
    assert sorted(sum(c[0] for c in d.calls) for d in detectors) == sorted(
        len(range(i, len(IMAGES), n)) for i in range(n))
    # each process returns the whole evaluation; the folder holds every image once, in order
    for ev in evs:
        assert [r.name for r in ev.results] == [r.name for r in alone.results]
        assert ev.summary == {**alone.summary} and ev.path == tmp_path / "split"
    assert (tmp_path / "split" / "per_image.json").read_text() == (tmp_path / "one" / "per_image.json").read_text()
    assert (tmp_path / "split" / "scores.csv").read_text() == (tmp_path / "one" / "scores.csv").read_text()
    scores = json.loads((tmp_path / "split" / "scores.json").read_text())
    assert scores["settings"]["processes"] == n


def test_a_failing_process_fails_every_process(saved_set, tmp_path):
    from mudi.evaluate import evaluate

    g = write_generation(tmp_path / "G", IMAGES)

    class Broken:
        def detect(self, images, queries, threshold):
            raise RuntimeError("CUDA out of memory (stand-in)")

    def one_process(procs):
        models = _fake_models()
        if procs.index == 1:
            models.detector = Broken()
        return evaluate(_config(saved_set, g, tmp_path / "E"), models=models, processes=procs)

    evs = ThreadGroup(2).run(one_process)
    assert all(isinstance(e, MudiError) and "process 1 of 2" in str(e) and "out of memory" in str(e) for e in evs)
    assert not (tmp_path / "E").exists()  # nothing written


def test_compare_splits_every_image_folder(saved_set, tmp_path):
    from mudi.evaluate import compare

    a = write_generation(tmp_path / "a", IMAGES[:5])
    b = write_generation(tmp_path / "b", IMAGES[2:])
    config = _config(saved_set, a)
    alone = compare([f"a={a}", f"b={b}"], config, out=tmp_path / "one", models=_fake_models())
    comps = ThreadGroup(2).run(lambda procs: compare([f"a={a}", f"b={b}"], config, out=tmp_path / "split",
                                                    models=_fake_models(), processes=procs))
    assert not [c for c in comps if isinstance(c, BaseException)], comps
    for c in comps:
        assert c.table == [dict(row, path=row["path"].replace("/one/", "/split/")) for row in alone.table]
        assert c.win_rate == alone.win_rate
    for label in ("a", "b"):
        assert ((tmp_path / "split" / "compare" / label / "per_image.json").read_text()
                == (tmp_path / "one" / "compare" / label / "per_image.json").read_text())
    assert (tmp_path / "split" / "comparison.json").is_file()


def test_two_cpu_processes_of_mudi_evaluate(tiny_models, saved_set, tmp_path):
    """`accelerate launch -m mudi.cli evaluate` as two CPU processes: one folder, the single-process rows."""
    g = write_generation(tmp_path / "G", IMAGES[:5])
    args = ["-m", "mudi.cli", "evaluate", "--images", str(g), "--subjects", str(saved_set), "--detector",
            str(tiny_models / "owlv2"), "--embedder", str(tiny_models / "dinov2"), "--clip", str(tiny_models / "clip"),
            "--threshold", "0.05", "--device", "cpu", "--batch-size", "2"]
    results = launch([*args, "--out", str(tmp_path / "split")])
    assert all(r.returncode == 0 for r in results), [r.stderr[-3000:] for r in results]
    assert "mudi evaluate: wrote" in results[0].stdout and "wrote" not in results[1].stdout  # main prints
    from mudi.cli import main

    assert main([*args[2:], "--out", str(tmp_path / "one")]) == 0
    split = json.loads((tmp_path / "split" / "per_image.json").read_text())
    one = json.loads((tmp_path / "one" / "per_image.json").read_text())
    assert [r["name"] for r in split] == ["0000", "0001", "0002", "0003", "0004"]
    assert split == one
    assert json.loads((tmp_path / "split" / "scores.json").read_text())["settings"]["processes"] == 2
    assert (tmp_path / "split" / "report.html").is_file()


def test_more_processes_than_images(saved_set, tmp_path):
    from mudi.evaluate import evaluate

    g = write_generation(tmp_path / "G", [GOOD, TWICE])
    evs = ThreadGroup(3).run(lambda procs: evaluate(_config(saved_set, g, tmp_path / "E"), models=_fake_models(),
                                                    processes=procs))
    assert [[r.name for r in ev.results] for ev in evs] == [["0000", "0001"]] * 3  # process 2 had nothing to do
    assert [p["name"] for p in json.loads((tmp_path / "E" / "per_image.json").read_text())] == ["0000", "0001"]

"""Ctrl-C during ``distillab bench``, for real: the command runs as a subprocess and gets SIGINT once its first
run has finished. It must stop at once (exit 130, one line saying what is finished and how to continue), record
no error, leave the runs it had not started without a folder (or with an empty one) and the ones in flight
resumable; the same command then finishes the grid with no failed run."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from distillab.bench import DONE, NEW, PARTIAL, load_suite, run_state

SUITE = {  # eight seconds-long runs; the teacher goes to a store inside the grid folder
    "description": "interrupt test",
    "seeds": [0, 1, 2, 3],
    "overrides": ["data.options.num_samples=500", "train.epochs=5"],
    "run_overrides": ["train.tensorboard=false"],
    "store": "grid",
    "pairs": [{
        "name": "p",
        "teacher": "mnist1d/teacher_cnn1d.yaml",
        "student": {"arch": "cnn1d_small", "options": {"width": 4}},
        "config": ["mnist1d/{method}.yaml"],
        "configs": {"ce": "mnist1d/student_baseline.yaml"},
        "methods": ["ce", "kd"],
    }],
}
RUN_LINE = re.compile(r"^\s+p/\w+/seed\d: \d+\.\d\d% \(")  # the plain line a finished run prints
DEADLINE_S = 120  # far above the few seconds each step takes: only a hang reaches it


class Bench:
    """``distillab bench`` as a subprocess whose output is read line by line while it runs."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        # its own process group, as a terminal's foreground job: a Ctrl-C reaches the workers too
        self.proc = subprocess.Popen([sys.executable, "-m", "distillab.cli", "bench", *args], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, "COLUMNS": "80"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: re.Pattern) -> None:
        end = time.monotonic() + DEADLINE_S
        while not any(pattern.search(line) for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.kill()
                pytest.fail("no line matching %r; output:\n%s" % (pattern.pattern, "\n".join(self.lines)))
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # the whole group, as the terminal does

    def finish(self) -> int:
        try:
            rc = self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("still running:\n" + "\n".join(self.lines))
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.mark.parametrize("workers", [2, 1])
def test_ctrl_c_stops_the_grid_and_the_same_command_finishes_it(tmp_path, workers):
    suite_file = tmp_path / "grid.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "out"
    args = [str(suite_file), "--out", str(out), "--threads", "1"] + (["--workers", str(workers)] if workers > 1 else [])
    runs, _ = load_suite(suite_file).grid(out)

    bench = Bench(args, tmp_path)
    try:
        bench.wait_for(RUN_LINE)  # printed (and flushed into the pipe) as soon as the first run ends
        done_before = len(list(out.glob("runs/*/*/*/summary.json")))
        tic = time.monotonic()
        bench.ctrl_c()
        rc = bench.finish()
    finally:
        bench.kill()
    stopped_s = time.monotonic() - tic
    assert rc == 130, bench.output
    assert stopped_s < 15, f"took {stopped_s:.1f} s to stop"  # it stops, it does not run the queue out
    assert "Traceback" not in bench.output, bench.output
    command = shlex.join(["distillab", "bench", str(suite_file), "--out", str(out)]
                         + (["--workers", str(workers)] if workers > 1 else []) + ["--threads", "1"])
    said = [line for line in bench.lines if "continue with:" in line]
    assert len(said) == 1, bench.output
    match = re.search(r"(\d+) of 8 runs finished, (\d+) left.*; continue with: (.*)$", said[0])
    assert match, said[0]
    assert match[3] == command

    states = {spec.key: run_state(spec.folder) for spec in runs}
    assert not list(out.rglob("error.txt")), "an interrupted run was recorded as failed"
    assert set(states.values()) <= {DONE, PARTIAL, NEW}
    assert int(match[1]) == sum(s == DONE for s in states.values()) >= 1
    assert int(match[2]) == 8 - int(match[1])
    # no queued run was started after the Ctrl-C: at most the runs in flight could finish meanwhile
    assert done_before <= int(match[1]) <= done_before + workers, (done_before, bench.output)
    for spec in runs:  # not started (or stopped before its first checkpoint): nothing in its folder
        if states[spec.key] == NEW:
            assert not spec.folder.exists() or not any(spec.folder.iterdir()), spec.key
    partial = [spec for spec in runs if states[spec.key] == PARTIAL]
    assert all((spec.folder / "checkpoints" / "last.pt").stat().st_size > 0 for spec in partial)
    finished = {spec.key: (spec.folder / "summary.json").stat().st_mtime_ns
                for spec in runs if states[spec.key] == DONE}

    again = Bench(args, tmp_path)
    try:
        assert again.finish() == 0, again.output
    finally:
        again.kill()
    assert all(run_state(spec.folder) == DONE for spec in runs)
    for spec in runs:
        if spec.key in finished:  # not trained again
            assert (spec.folder / "summary.json").stat().st_mtime_ns == finished[spec.key]
        else:  # trained now: resumed from its checkpoint, or from the start
            line = next(line for line in again.lines if f"{spec.key}: " in line)
            assert ("resumed" in line) == (states[spec.key] == PARTIAL), line
    cells = list(csv.DictReader(open(out / "results.csv")))
    assert {c["method"]: (c["n"], c["n_failed"]) for c in cells} == {"ce": ("4", "0"), "kd": ("4", "0")}
    assert "## Failed runs\n\nNone." in (out / "report" / "report.md").read_text()
    # the grid's teacher went to its own store, not to the user's
    assert (out / "store").is_dir() and not (Path(os.environ["DISTILLAB_HOME"]) / "teachers").exists()

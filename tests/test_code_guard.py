"""evaluate.py runs model-written code (--task=humaneval_infill) only when the user asks
(--allow_code_execution=True), and each program under a guard (evaluate.disable_destructive_calls): a
completion that removes, renames or overwrites a file outside its directory, kills or starts a process, or
opens a socket fails there, and the file, the process and the listening socket are untouched. Ordinary
programs pass and fail as before; Ctrl-C is one line."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import evaluate
from configurator import InputError
from conftest import ROOT, run_python, start_python

PROBLEM = {"task_id": "guard/0", "prompt": "def f():\n", "suffix": "", "entry_point": "f",
           "test": "def check(candidate):\n    assert candidate() == 1\n"}
SINGLE_LINE = os.path.join(ROOT, "..", "shared", "data", "human_eval_infilling", "HumanEval-SingleLineInfilling.jsonl.gz")


def run_completions(bodies, timeout=20):
    """The outcome of f() with each body (lines of code, a return last) against check: f() == 1."""
    samples = [{"task_id": "guard/0", "completion": "".join(f"    {line}\n" for line in body.splitlines())}
               for body in bodies]
    return evaluate.humaneval_outcomes({"guard/0": PROBLEM}, samples, timeout=timeout, workers=2)


def attacks(outside, folder, marker, pid, port):
    """{name: a statement that would do harm outside the program's directory}."""
    python = repr([sys.executable, "-c", f"open({marker!r}, 'w')"])  # a process that writes the marker
    found = {
        "os.remove": f"os.remove({outside!r})", "posix.unlink": f"import posix; posix.unlink({outside!r})",
        "pathlib unlink": f"import pathlib; pathlib.Path({outside!r}).unlink()",
        "unlink by dir_fd": f"os.unlink({os.path.basename(outside)!r}, dir_fd=os.open({folder!r}, os.O_RDONLY))",
        "os.rename": f"os.rename({outside!r}, {outside + '.moved'!r})", "os.replace": f"os.replace({outside!r}, 'here')",
        "shutil.move": f"import shutil; shutil.move({outside!r}, 'here')",
        "shutil.rmtree": f"import shutil; shutil.rmtree({folder!r})", "os.truncate": f"os.truncate({outside!r}, 0)",
        "os.chmod": f"os.chmod({outside!r}, 0)", "open for writing": f"open({outside!r}, 'w')",
        "open via a link": f"os.symlink({outside!r}, 'link'); open('link', 'a')",
        "os.open for writing": f"os.open({outside!r}, os.O_WRONLY | os.O_TRUNC)",
        "io.FileIO": f"import io; io.FileIO({outside!r}, 'w')",
        "os.kill": f"os.kill({pid}, 9)", "os.killpg": f"os.killpg({pid}, 9)",
        "os.system": f"os.system('touch {marker}')", "subprocess.run": f"import subprocess; subprocess.run({python})",
        "subprocess.Popen": f"import subprocess; subprocess.Popen({python})", "os.fork": "os.fork()",
        "os.posix_spawn": f"os.posix_spawn({sys.executable!r}, {python}, {{}})",
        "os.execv": f"os.execv({sys.executable!r}, {python})",
        "multiprocessing": "import multiprocessing; multiprocessing.Process(target=print).start()",
        "socket.socket": "import socket; socket.socket()", "_socket.socket": "import _socket; _socket.socket()",
        "socket.create_connection": f"import socket; socket.create_connection(('127.0.0.1', {port}))",
    }
    if hasattr(os, "pidfd_open"):
        found["pidfd_send_signal"] = f"import signal; signal.pidfd_send_signal(os.pidfd_open({pid}), 9)"
    return found


@pytest.fixture
def victims(tmp_path):
    """A file and a folder outside the program's directory, a sleeping process, a listening socket."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("the user's file\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    server = socket.create_server(("127.0.0.1", 0))
    yield str(folder / "keep.txt"), str(folder), str(tmp_path / "spawned"), sleeper, server
    sleeper.kill()
    sleeper.wait()
    server.close()


def test_destructive_calls_fail_and_harm_nothing(victims):
    """Each attack raises PermissionError inside the program (the body that catches it passes) and fails the
    program that does not catch it; afterwards the file and the folder are as they were, the sleeping process is
    alive, nothing was spawned and nobody connected."""
    outside, folder, marker, sleeper, server = victims
    found = attacks(outside, folder, marker, sleeper.pid, server.getsockname()[1])
    caught = [f"import os\ntry:\n    {code}\nexcept PermissionError:\n    return 1\nreturn 0" for code in found.values()]
    bare = [f"import os\n{code}\nreturn 1" for code in found.values()]
    outcomes = run_completions(caught + bare)
    assert dict(zip(found, outcomes[:len(found)])) == dict.fromkeys(found, "passed")
    assert dict(zip(found, outcomes[len(found):])) == dict.fromkeys(found, "failed")
    with open(outside) as f:
        assert f.read() == "the user's file\n"
    assert os.listdir(folder) == ["keep.txt"] and os.stat(outside).st_mode & 0o777 != 0
    assert sleeper.poll() is None and not os.path.exists(marker)
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()


def test_ordinary_programs_run_as_before():
    """Writing, reading and removing files in its own directory and temporary files still work; a wrong body
    fails; the canonical solutions of real HumanEval-infilling problems pass."""
    inside = ("open('scratch.txt', 'w').write('x')\nimport os, tempfile, shutil\nos.remove('scratch.txt')\n"
              "with tempfile.TemporaryDirectory() as d:\n    open(os.path.join(d, 'a'), 'w').write('1')\n"
              "    shutil.rmtree(d)\n    os.mkdir(d)\nwith tempfile.NamedTemporaryFile() as t:\n    t.write(b'1')\nreturn 1")
    assert run_completions([inside, "return 1", "return 2", "import math, json, re, collections\nreturn 1"]) == [
        "passed", "passed", "failed", "passed"]
    problems = evaluate.read_problems(SINGLE_LINE)
    ids = list(problems)[::100]
    canonical = [{"task_id": i, "completion": problems[i]["canonical_solution"]} for i in ids]
    assert evaluate.humaneval_outcomes(problems, canonical, timeout=20, workers=2) == ["passed"] * len(ids)


def write(path, rows):
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def test_code_execution_is_opt_in(tmp_path):
    """Without --allow_code_execution=True: one line naming the setting, status 1, before anything runs (the
    completion would have written a marker) and nothing written; with it, the task runs."""
    problems, samples, marker = str(tmp_path / "problems.jsonl"), str(tmp_path / "samples.jsonl"), tmp_path / "ran"
    write(problems, [PROBLEM])
    write(samples, [{"task_id": "guard/0", "completion": f"    open({str(marker)!r}, 'w')\n    return 1\n"}])
    before = sorted(os.listdir(tmp_path))
    args = ["--task=humaneval_infill", f"--samples={samples}", f"--problems={problems}"]
    proc = run_python([os.path.join(ROOT, "evaluate.py"), *args], cwd=str(tmp_path))
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "--allow_code_execution=True" in proc.stderr and "not a sandbox" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == before and not marker.exists()
    with pytest.raises(InputError, match="give --allow_code_execution=True"):
        evaluate.evaluate_humaneval_infill(samples, problems)
    metrics = evaluate.main(args + ["--allow_code_execution=True"])
    assert metrics["outcomes"] == {"failed": 1} and not marker.exists()  # the marker is outside: refused


def children(pid):
    """The pids of a process's children (Linux /proc, every thread's)."""
    found = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            found += [int(p) for p in f.read().split()]
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the running program through Linux /proc")
def test_ctrl_c_while_programs_run(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while programs run: one line, status 130,
    no metrics file; no further program starts and the running one is killed at its timeout."""
    problems, samples = str(tmp_path / "problems.jsonl"), str(tmp_path / "samples.jsonl")
    write(problems, [PROBLEM])
    write(samples, [{"task_id": "guard/0", "completion": "    while True:\n        pass\n"}] * 6)
    proc = start_python([os.path.join(ROOT, "evaluate.py"), "--task=humaneval_infill", f"--samples={samples}",
                         f"--problems={problems}", "--allow_code_execution=True", "--timeout=3", "--workers=1"],
                        cwd=str(tmp_path))
    deadline = time.time() + 120
    while not children(proc.pid) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    running = children(proc.pid)
    assert running, "no program started"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and out == ""
    assert err == "interrupted: no metrics were written; run the command again\n"
    assert sorted(os.listdir(tmp_path)) == ["problems.jsonl", "samples.jsonl"]
    for pid in running:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

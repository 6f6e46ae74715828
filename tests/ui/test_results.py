"""The Results tab's listing and the Runs tab's progress rows, read from folders (no browser, no training)."""
from __future__ import annotations

import json
import os
import time

from tunelab.ui import jobs, results


def test_comparisons_are_the_folders_with_a_comparison_json_newest_first(tmp_path):
    for i, name in enumerate(["old", "new"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "comparison.json").write_text("{}")
        os.utime(tmp_path / name / "comparison.json", (1000 + i, 1000 + i))
    (tmp_path / "unfinished" / "runs").mkdir(parents=True)  # no comparison.json: not listed
    (tmp_path / "uploads").mkdir()
    assert results.comparisons(tmp_path) == [tmp_path / "new", tmp_path / "old"]
    assert results.comparisons(tmp_path / "missing") == []


def test_progress_reads_each_method_from_its_files(tmp_path):
    runs = tmp_path / "runs"
    (runs / "lora").mkdir(parents=True)
    (runs / "lora" / "metrics.json").write_text(json.dumps({"epochs_run": 2, "validation": {"f1": 0.75,
                                                                                          "loss": 0.5}}))
    (runs / "full.log").write_text("  epoch 1/3: step 4/9, loss 0.6931, 0.01 s/step\n"
                                   "  epoch 1/3: step 6/9, loss 0.6900, 0.01 s/step\n")
    partial = runs / ".full.partial-1.abc-x"
    partial.mkdir()
    (partial / "history.jsonl").write_text(json.dumps({"step": 6, "epoch": 0.67, "train_loss": 0.69}) + "\n")
    rows = jobs.progress(tmp_path, ["lora", "full", "prompt"], running=True)
    assert rows == [["lora", "finished", "2 epoch(s)", "validation f1 0.7500"],
                    ["full", "training", "epoch 1/3, step 6/9", "loss 0.6900"],
                    ["prompt", "waiting", "", ""]]
    # The live history is what the curves are drawn from while the run trains.
    assert results.histories(tmp_path, ["lora", "full"]) == {"full": [{"step": 6, "epoch": 0.67, "train_loss": 0.69}]}
    assert results.curves_png(tmp_path, ["full"], "classification", None).startswith(b"\x89PNG")
    # A finished run's own file, its kept epoch ringed as in the report.
    (runs / "lora" / "history.jsonl").write_text(json.dumps({"step": 4, "epoch": 1, "validation_loss": 0.6,
                                                             "validation_f1": 0.7}) + "\n")
    (runs / "lora" / "metrics.json").write_text(json.dumps({"epochs_run": 1, "best_epoch": 1, "validation": {}}))
    assert set(results.histories(tmp_path, ["lora", "full"])) == {"lora", "full"}
    assert results.curves_png(tmp_path, ["lora", "full"], "classification", "f1").startswith(b"\x89PNG")


def test_a_started_comparison_outlives_the_request_thread_that_started_it():
    """It dies with the server, and Linux ties that to the thread that started it: the web server ends request
    threads after 10 s idle, which killed a comparison midway (SIGKILL) before every start went through one thread."""
    import subprocess
    import sys
    import threading
    started = []
    code = "from tunelab.runs import die_with_parent; die_with_parent(); print('up', flush=True); " \
           "import time; time.sleep(30)"

    def handle_request() -> None:
        started.append(jobs.start([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
        started.append(started[0].stdout.readline())  # it has asked to die with its parent, then the thread ends

    request = threading.Thread(target=handle_request)
    request.start()
    request.join()
    process, line = started
    try:
        assert line == "up\n"
        time.sleep(0.5)
        assert process.poll() is None, process.returncode
    finally:
        process.kill()
        process.wait()

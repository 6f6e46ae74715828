"""lm-evaluation-harness's side of `bench/prompt_scoring.py`. Runs in lm-eval's own virtual environment
(`bench/.lmeval-venv`, made by that script), so it imports nothing of tunelab.

    bench/.lmeval-venv/bin/python bench/lmeval_side.py '{"model": DIR, "tasks": DIR, "shots": 4, "batch_size": 16}'

Prints one line `RESULT {...}`: the seconds spent inside `HFLM.loglikelihood` (the scoring phase: tokenising
and forward passes; the task's set-up and the metric are outside the clock), and each test row's choice
log-likelihoods and prediction in document order.
"""
from __future__ import annotations

import json
import sys
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=args["model"], dtype="float32", batch_size=args["batch_size"], device="cpu",
              add_bos_token=args.get("add_bos_token", False))
    spent = [0.0]
    score = lm.loglikelihood

    def timed(requests, *rest, **kwargs):
        start = time.perf_counter()
        try:
            return score(requests, *rest, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    lm.loglikelihood = timed
    results = simple_evaluate(model=lm, tasks=["rt_sentiment"], num_fewshot=args["shots"], log_samples=True,
                              task_manager=TaskManager(include_path=args["tasks"]), batch_size=args["batch_size"],
                              random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    samples = sorted(results["samples"]["rt_sentiment"], key=lambda s: s["doc_id"])
    logliks = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    contexts = [s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple)) else
                s["arguments"]["gen_args_0"]["arg_0"] for s in samples[:1]]
    print("RESULT " + json.dumps({
        "seconds": spent[0], "logliks": logliks,
        "predictions": [max(range(len(ll)), key=ll.__getitem__) for ll in logliks],
        "accuracy": results["results"]["rt_sentiment"]["acc,none"], "first_context": contexts[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

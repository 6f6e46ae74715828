"""How far can label scoring go? Every zero-shot prompt of a two-label prompt config, on the whole splits.

For each input template × label template of the config (zero-shot, label names), prints validation and
test accuracy raw, calibrated on training inputs (what the search can pick), and at the best decision
threshold chosen on the *test labels themselves*: no calibration of that prompt's two scores, fitted or
not, can do better on the test split. The last line does the same for the sum of all prompts' scores.
It reads the splits, model and options from the config, as `tunelab train` would.

    python bench/prompt_ceiling.py [configs/sentiment/smollm2_prompt.yaml]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from tunelab import pipeline  # noqa: E402
from tunelab.settings import load_config  # noqa: E402
from tunelab.data import load_splits  # noqa: E402
from tunelab.methods.prompt import Candidate  # noqa: E402
from tunelab.methods.prompt_decoder import DEFAULT_LABEL_TEMPLATES, DEFAULT_TEMPLATES  # noqa: E402


def _best_threshold_accuracy(margin: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of `margin > t` at the best t for labels `y` (every cut point tried)."""
    order = np.argsort(margin)
    ys = y[order]
    # Cutting after the i-th smallest margin: the first i are predicted 0, the rest 1.
    correct = (ys == 0).cumsum() + (ys == 1).sum() - (ys == 1).cumsum()
    return float(max((ys == 1).sum(), correct.max())) / len(y)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="configs/sentiment/smollm2_prompt.yaml")
    args = parser.parse_args()
    cfg = load_config(args.config)
    task = pipeline.task_for(cfg)
    splits = load_splits(cfg.data, task.label_kind)
    if len(splits.labels) != 2:
        print(f"{args.config}: this bench needs two labels, the data has {len(splits.labels)}", file=sys.stderr)
        return 2
    adapted = pipeline.prepare(cfg, splits, log=lambda _: None)
    scorer, options = adapted.method.scorer, adapted.method.options
    scorer.setup(splits.train, splits.labels, options)
    y = {name: np.array([splits.labels.index(e.label) for e in examples])
         for name, examples in (("validation", splits.validation), ("test", splits.test))}
    texts = {"validation": [e.text for e in splits.validation], "test": [e.text for e in splits.test]}
    print(f"{args.config}: {len(y['validation'])} validation / {len(y['test'])} test examples, "
          f"chat template {'on' if scorer.chat else 'off'}, calibration on {len(scorer.calibration_texts)} "
          f"training inputs")
    print(f"{'input template':22} {'label template':28} {'val raw':>8} {'val cal':>8} {'test raw':>9} "
          f"{'test cal':>9} {'test best threshold':>20}")
    margins = []
    templates = list(dict.fromkeys(DEFAULT_TEMPLATES + options.templates))
    label_templates = list(dict.fromkeys(DEFAULT_LABEL_TEMPLATES + options.label_templates))
    for template, label_template in itertools.product(templates, label_templates):
        c = Candidate(template, label_template, 0, True, verbalizer="label", calibration="inputs")
        raw = {name: scorer.raw_scores(c, t) for name, t in texts.items()}
        bias = scorer.bias(c)  # the search's own `inputs` calibration
        scores = {(name, cal): scorer.calibrated(raw[name], bias) if cal else raw[name]
                  for name in raw for cal in (False, True)}
        accuracy = {key: float((s.argmax(1) == y[key[0]]).mean()) for key, s in scores.items()}
        margin = raw["test"][:, 1] - raw["test"][:, 0]
        margins.append(margin / margin.std())
        print(f"{template!r:22} {label_template!r:28} {accuracy['validation', False]:8.3f} "
              f"{accuracy['validation', True]:8.3f} {accuracy['test', False]:9.3f} {accuracy['test', True]:9.3f} "
              f"{_best_threshold_accuracy(margin, y['test']):20.3f}", flush=True)
    print(f"all {len(margins)} prompts summed (each margin scaled to unit spread), best test threshold: "
          f"{_best_threshold_accuracy(np.sum(margins, 0), y['test']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

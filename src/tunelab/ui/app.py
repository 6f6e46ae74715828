"""The page: four tabs over one output folder — Setup (data, model, task, methods and their options, the live
YAML config, the estimate), Runs (progress per method, live learning curves, the log, Stop and Resume), Results
(the comparisons in the folder: table, report figures, recommendation) and Playground (each run's answer side by
side, Export). The logic lives in setup.py, jobs.py, results.py and playground.py; this file wires it to Gradio."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from ..config import _merge, parse_overrides
from ..data import DATASETS
from ..errors import TunelabError
from ..estimation import estimate
from ..recommend import recommend_estimated
from . import jobs, playground, results, setup

UPLOAD = "(the uploaded file)"
ROLE_NAMES = list(dict.fromkeys(r for roles in setup.ROLES.values() for r in roles))
# System fonts: Gradio's default theme would fetch its fonts from a CDN, and the page must work offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])


def build(output: str | Path) -> gr.Blocks:
    output = Path(output).resolve()
    options = setup.method_options()
    option_keys = [(m, key) for m, fields in options.items() for key, _, _ in fields]
    current: dict[str, Any] = {"job": None, "shown": None}

    with gr.Blocks(title="tunelab", analytics_enabled=False) as page:
        gr.Markdown("# tunelab — prompt, PEFT or full fine-tuning: measure which to use")
        with gr.Tabs() as tabs:
            with gr.Tab("Setup", id="setup"):
                with gr.Row():
                    with gr.Column():
                        upload = gr.File(label="Upload a CSV / JSONL file", file_types=[".csv", ".jsonl", ".json",
                                         ".tsv"], type="filepath", elem_id="upload")
                        builtin = gr.Dropdown([UPLOAD] + setup.choices()["datasets"], value=UPLOAD,
                                              label="or a built-in dataset", elem_id="builtin")
                        task = gr.Dropdown(setup.choices()["tasks"], value="classification", label="Task",
                                           elem_id="task")
                        roles = {r: gr.Dropdown([setup.NONE], value=setup.NONE, label=f"column: {r}",
                                                elem_id=f"column-{r}", visible=r in setup.ROLES["classification"],
                                                allow_custom_value=True) for r in ROLE_NAMES}
                        model = gr.Textbox("minilm", label="Model: an alias or a local Hugging Face folder",
                                           info="aliases: " + ", ".join(setup.choices()["models"]),
                                           elem_id="model")
                        methods = gr.CheckboxGroup(setup.choices()["methods"], value=["lora", "full"],
                                                   label="Methods to compare", elem_id="methods")
                    with gr.Column():
                        with gr.Row():
                            epochs = gr.Number(3, label="train.epochs", precision=0, elem_id="epochs")
                            batch = gr.Number(16, label="train.batch_size", precision=0, elem_id="batch")
                            length = gr.Number(128, label="data.max_length", precision=0, elem_id="max-length")
                            limit = gr.Number(0, label="data.max_examples (0: all)", precision=0,
                                              elem_id="max-examples")
                        name = gr.Textbox("", label="Comparison name (default: <data>-<model>)", elem_id="name")
                        extra = gr.Textbox("", label="More settings: dotted keys, one per line",
                                           placeholder="train.learning_rate=1e-3\ndata.split.seed=1", lines=2,
                                           info="every key: `tunelab config`", elem_id="overrides")
                        fields = []
                        for method, items in options.items():
                            with gr.Accordion(f"{method} options", open=False):
                                for key, default, doc in items:
                                    fields.append(gr.Textbox(default, label=f"methods.{method}.{key}", info=doc,
                                                             max_lines=1))
                message = gr.Textbox("", label="Check", interactive=False, elem_id="message")
                form_timer = gr.Timer(1.0)
                with gr.Row():
                    start = gr.Button("Start comparison", variant="primary", elem_id="start")
                    estimate_button = gr.Button("Estimate time and memory (a few timed steps)",
                                                elem_id="estimate")
                estimates = gr.Dataframe(headers=["method", "trainable", "est. time (min)", "est. peak memory (MB)"],
                                         interactive=False, elem_id="estimates")
                advice = gr.Textbox("", label="Recommendation before training", interactive=False,
                                    elem_id="advice")
                config_yaml = gr.Code("", language="yaml", label="config.yaml (what `tunelab compare` reads)",
                                      elem_id="yaml")
                download = gr.DownloadButton("Download config.yaml", elem_id="download")

            with gr.Tab("Runs", id="runs"):
                job_state = gr.Textbox("no comparison started yet", label="Comparison", interactive=False,
                                       elem_id="job-state")
                with gr.Row():
                    stop = gr.Button("Stop (checkpoint kept)", variant="stop", elem_id="stop")
                    resume = gr.Button("Resume", elem_id="resume")
                progress = gr.Dataframe(headers=["method", "state", "where", "latest"], interactive=False,
                                        elem_id="progress")
                curves = gr.Image(label="Learning curves (from each run's history.jsonl)", type="pil",
                                  elem_id="curves")
                log = gr.Textbox("", label="Log (newest lines; all of it in the comparison's ui.log)", lines=14,
                                 max_lines=14, interactive=False, autoscroll=True,
                                 elem_id="log")
                timer = gr.Timer(1.0)

            with gr.Tab("Results", id="results"):
                with gr.Row():
                    chosen = gr.Dropdown([], value=None, label=f"Comparisons in {output}", elem_id="comparisons",
                                         allow_custom_value=True)
                    refresh = gr.Button("Refresh the list", elem_id="refresh")
                recommendation = gr.Textbox("", label="Recommendation", interactive=False, lines=3,
                                            elem_id="recommendation")
                table = gr.Dataframe(interactive=False, elem_id="table", wrap=True)
                gallery = gr.Gallery(label="Report figures (as in report.html)", columns=2, height="auto",
                                     object_fit="contain", elem_id="figures")

            with gr.Tab("Playground", id="playground"):
                text = gr.Textbox("", label="A text (a review, a question, a chat message, a verse)", lines=2,
                                  elem_id="playground-text")
                ask = gr.Button("Ask every run", variant="primary", elem_id="ask")
                answers = gr.Dataframe(headers=["run", "prediction", "details"], interactive=False,
                                       elem_id="answers")
                with gr.Row():
                    run_choice = gr.Dropdown([], label="Run to export", elem_id="export-run")
                    merge = gr.Checkbox(False, label="--merge (a plain transformers folder)")
                    export = gr.Button("Export", elem_id="export")
                exported = gr.Textbox("", label="Export", interactive=False, elem_id="exported")

        # --- Setup -------------------------------------------------------------------------------------------
        def source_of(file, dataset) -> str:
            return dataset if dataset != UPLOAD else (file or "")

        def config_of(file, dataset, task_name, model_name, chosen_methods, n_epochs, n_batch, n_length, n_limit,
                      run_name, more, *values):
            mapping = dict(zip(ROLE_NAMES, values[:len(ROLE_NAMES)]))
            given: dict[str, dict[str, str]] = {}
            for (method, key), value in zip(option_keys, values[len(ROLE_NAMES):]):
                given.setdefault(method, {})[key] = value
            cfg = setup.build(task_name, model_name.strip(), source_of(file, dataset), mapping, chosen_methods or [],
                              given, n_epochs or 1, n_batch or 1, n_length or 8, n_limit or None, str(output),
                              run_name.strip())
            lines = [line.strip() for line in (more or "").splitlines() if line.strip()]
            if lines:
                cfg = _merge(cfg, parse_overrides(lines))
            return cfg

        form = [upload, builtin, task, model, methods, epochs, batch, length, limit, name, extra,
                *roles.values(), *fields]

        def refresh_config(*values):
            try:
                cfg = config_of(*values)
            except TunelabError as e:
                return f"error: {e}", gr.skip(), gr.skip()
            chosen_methods = values[4] or []
            text = setup.to_yaml(cfg, chosen_methods)
            path = output / ".ui" / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if not cfg["data"]["source"]:
                return "upload a file or choose a built-in dataset", text, str(path)
            found = setup.problem(cfg, chosen_methods)
            return found or "ok: `tunelab compare` accepts this config and its data", text, str(path)

        def uploaded(file, task_name):
            """The file is copied into OUTPUT/uploads/, which the config names (Gradio's copy is temporary)."""
            if not file:
                return ("", *[gr.update(choices=[setup.NONE], value=setup.NONE) for _ in ROLE_NAMES])
            target = output / "uploads" / Path(file).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            try:
                columns = setup.columns_of(target)
            except TunelabError as e:
                return (f"error: {e}", *[gr.update(choices=[setup.NONE], value=setup.NONE) for _ in ROLE_NAMES])
            guess = setup.guess_columns(task_name, columns)
            return ("", *[gr.update(choices=[setup.NONE, *columns], value=guess.get(r, setup.NONE))
                          for r in ROLE_NAMES])

        # The stored path of the upload, not Gradio's temporary one, goes into the config.
        upload_path = gr.State("")

        def keep_upload(file):
            return str(output / "uploads" / Path(file).name) if file else ""

        def task_changed(task_name):
            return [gr.update(visible=r in setup.ROLES.get(task_name, ())) for r in ROLE_NAMES]

        def form_key(path, values) -> str:
            return repr((path, values[1:]))  # the stored upload stands for Gradio's copy of it

        def refresh_with_upload(path, *values):
            return (*refresh_config(path, *values[1:]), form_key(path, values))

        def refresh_if_changed(shown, path, *values):
            """Each second: the config again if the form holds other values than the config shown was made of.
            The last change of a field filled right after another was, about once in 15 runs of a test, never shown
            (somewhere in Gradio's handling of events queued together; the cause was not found): with this the shown
            config catches up within a second. Start reads the form itself, not the shown config."""
            if form_key(path, values) == shown:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return refresh_with_upload(path, *values)

        shown_form = gr.State("")  # form_key of the values the shown config was made of
        outputs = [message, config_yaml, download, shown_form]
        upload.upload(uploaded, [upload, task], [message, *roles.values()]).then(
            keep_upload, upload, upload_path).then(
            refresh_with_upload, [upload_path, *form], outputs, concurrency_limit=1, concurrency_id="config")
        upload.clear(lambda: "", None, upload_path)
        task.change(task_changed, task, list(roles.values()))
        for component in form[1:]:
            # One at a time, the last change last: the shown config is always the form's latest.
            component.change(refresh_with_upload, [upload_path, *form], outputs, show_progress="hidden",
                             trigger_mode="always_last", concurrency_limit=1, concurrency_id="config")
            if isinstance(component, (gr.Textbox, gr.Number)):
                # Leaving a field refreshes too: a change made while other refreshes were queued was seen lost
                # once under load, and the YAML must show what Start would run.
                component.blur(refresh_with_upload, [upload_path, *form], outputs, show_progress="hidden",
                               trigger_mode="always_last", concurrency_limit=1, concurrency_id="config")
        form_timer.tick(refresh_if_changed, [shown_form, upload_path, *form], outputs, show_progress="hidden",
                        trigger_mode="always_last", concurrency_limit=1, concurrency_id="config")

        def run_estimate(path, *values):
            cfg = config_of(path, *values[1:])
            chosen_methods = values[4] or []
            found = setup.problem(cfg, chosen_methods)
            if found:
                return gr.skip(), found, found
            try:
                result = estimate(cfg, chosen_methods, log=lambda _: None)
            except TunelabError as e:
                return gr.skip(), f"error: {e}", gr.skip()
            rows = [[r["method"], f"{r['trainable']:,}", f"{r['fit_seconds'] / 60:.2f}", f"{r['peak_memory_mb']:.0f}"]
                    if r["status"] == "ok" else [r["method"], "failed: " + r["reason"], "", ""]
                    for r in result["methods"]]
            budget = {"max_minutes": None, "max_memory_mb": None}
            text = recommend_estimated(result["methods"], result["n_train"], result["n_classes"], budget)["text"]
            return rows, text, "estimated: " + "; ".join(result["assumptions"])

        estimate_button.click(run_estimate, [upload_path, *form], [estimates, advice, message])

        def start_job(path, *values):
            job = current["job"]
            if job is not None and job.running:
                return "a comparison is running already: stop it first", gr.skip(), gr.Tabs()
            cfg = config_of(path, *values[1:])
            chosen_methods = values[4] or []
            found = setup.problem(cfg, chosen_methods)
            if found:
                return found, gr.skip(), gr.Tabs()
            folder = output / (cfg.get("name") or _default_name(cfg))
            current["job"] = jobs.launch(cfg, chosen_methods, folder)
            current["shown"] = None
            return f"started: {folder}", "running", gr.Tabs(selected="runs")

        # --- Runs --------------------------------------------------------------------------------------------
        def tick():
            job = current["job"]
            if job is None:
                return (gr.skip(),) * 4 + (gr.skip(),) * 4
            cfg = _read_cfg(job.folder)
            # One look at the process for the whole tick: a process ending between two looks showed "stopped"
            # above a table that still said "training".
            state = job.state()
            running = job.process.returncode is None
            rows = jobs.progress(job.folder, job.methods, running)
            png = results.curves_png(job.folder, job.methods, cfg.get("task", "classification"),
                                     ((cfg.get("train") or {}).get("early_stopping") or {}).get("metric"))
            image = _image(png) if png else gr.skip()
            shown = (gr.skip(),) * 4
            if not running and current["shown"] != job.folder and results.comparison(job.folder):
                current["shown"] = job.folder  # the finished comparison opens in Results and the Playground
                shown = show(str(job.folder), refresh_list=True)
            return (f"{job.folder}: {state}", rows, image, job.log(), *shown)

        def stop_job():
            job = current["job"]
            if job is None or not job.running:
                return "nothing is running"
            job.stop()
            return f"{job.folder}: stopping (the method under way saves a checkpoint)…"

        def resume_job():
            job = current["job"]
            if job is None:
                return "no comparison to resume: start one in Setup"
            if job.running:
                return f"{job.folder}: running already"
            current["job"] = jobs.resume(job.folder, job.methods)
            current["shown"] = None
            return f"{job.folder}: resumed"

        # --- Results and Playground --------------------------------------------------------------------------
        def show(folder: str, refresh_list: bool = False):
            data = results.comparison(folder) if folder else None
            if data is None:
                return (gr.update(), "", None, []) if not refresh_list else \
                    (gr.update(choices=[str(p) for p in results.comparisons(output)]), "", None, [])
            header, rows = results.table(data)
            listing = gr.update(choices=[str(p) for p in results.comparisons(output)], value=folder)
            return (listing, results.recommendation(data), {"headers": header, "data": rows},
                    results.figures(folder))

        def runs_of(folder: str):
            runs = results.runs(Path(folder)) if folder else []
            return gr.update(choices=[str(r) for r in runs], value=str(runs[0]) if runs else None)

        def ask_runs(folder: str, question: str):
            runs = results.runs(Path(folder)) if folder else []
            if not runs:
                raise gr.Error("choose a finished comparison in Results first")
            try:
                return playground.answer(runs, question)
            except TunelabError as e:
                raise gr.Error(f"error: {e}")

        def export_run(run: str, merged: bool):
            if not run:
                return "choose a run"
            try:
                return f"exported to {playground.export_run(Path(run), merged)}"
            except TunelabError as e:
                return f"error: {e}"

        start.click(start_job, [upload_path, *form], [message, job_state, tabs])
        timer.tick(tick, None, [job_state, progress, curves, log, chosen, recommendation, table, gallery],
                   show_progress="hidden")
        stop.click(stop_job, None, job_state)
        resume.click(resume_job, None, job_state)
        def open_newest():
            """On each page load: the list as the folder is now, the newest comparison opened."""
            found = results.comparisons(output)
            return show(str(found[0]) if found else "", refresh_list=True)

        page.load(open_newest, None, [chosen, recommendation, table, gallery]).then(runs_of, chosen, run_choice)
        chosen.input(show, chosen, [chosen, recommendation, table, gallery])
        chosen.change(runs_of, chosen, run_choice)
        refresh.click(lambda: gr.update(choices=[str(p) for p in results.comparisons(output)]), None, chosen)
        ask.click(ask_runs, [chosen, text], answers)
        export.click(export_run, [run_choice, merge], exported)
    return page


def _image(png: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(png))


def _read_cfg(folder: Path) -> dict[str, Any]:
    import yaml
    path = folder / "ui-config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _default_name(cfg: dict[str, Any]) -> str:
    """`compare`'s default name, <data>-<model>."""
    source = str(cfg["data"]["source"])
    stem = source if source in DATASETS else Path(source).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{stem}-{Path(str(cfg['model'])).name}").strip("-")

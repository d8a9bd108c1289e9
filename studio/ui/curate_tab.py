"""Curate tab: score images (a gallery search, ids, a folder, or everything) with a progress bar, review them in a
grid filtered by verdict and sorted by any metric, see each image's breakdown and reason, override verdicts
(buttons or A / R / F, arrows to move), tune weights and rules with a live count of the verdicts that would change,
learn them from the overrides, and send the accepted images to the Train tab."""

from __future__ import annotations

import re
import time
from pathlib import Path

import gradio as gr
import numpy as np

from studio.curation.dedup import link_text
from studio.curation.policy import KEYS, METRICS, SPECS, fmt
from studio.curation_service import CurationRequest
from studio.errors import StudioError
from studio.ui.common import PLUMBING, Form, LoadEvent, Tab, session_owner, stop_jobs, stream_job, user_errors

PAGE = 48
SEND_AT_MOST = 1000  # accepted images sent to the Upscale tab at once (the best ones)
FILTERS = ["all", "accepted", "featured", "rejected", "duplicate", "error", "manual"]
SORTS = [("Newest", "newest"), ("Combined score", "score")] + [(m.title, m.key) for m in METRICS]
CURATE_QUEUE = {"concurrency_id": "curate", "concurrency_limit": 1}  # CPU work: its own queue, not the GPU's
WEIGHTED = [m for m in METRICS]


def _who(request: gr.Request | None) -> str:
    name = getattr(request, "username", None) if request is not None else None
    return name or "local user"


def _thumbnail(record: dict, data_dir: Path):
    """What the grid shows: the file itself when the page may load it (inside the data dir), else a copy."""
    file = Path(record["file"])
    if file.is_file() and file.resolve().is_relative_to(data_dir.resolve()):
        return str(file)
    from PIL import Image

    try:
        with Image.open(file) as img:
            img.thumbnail((256, 256))
            return img.convert("RGB")
    except Exception:  # noqa: BLE001 - a missing or broken file shows as a grey tile
        return Image.new("RGB", (64, 64), (90, 90, 90))


MARKS = {"accepted": "✓", "featured": "★", "rejected": "✗", "duplicate": "≈", "error": "!"}


def _caption(record: dict) -> str:
    """"✓ 0.94 accepted" (a hand for a manual verdict): the mark and score first, as a narrow tile cuts the end."""
    score, verdict = record.get("score"), record.get("verdict")
    hand = "✋" if record.get("manual") else ""
    return f"{hand}{MARKS.get(verdict, '·')} {'-' if score is None else f'{score:.2f}'} {verdict or 'unscored'}"


def breakdown(record: dict | None, history: list[dict], policy) -> str:
    """The selected image's verdict, reason, every metric with its goodness and rule, and its history."""
    if not record:
        return "Select an image to see its breakdown."
    auto = record.get("auto") or {}
    manual = record.get("manual")
    lines = [f"### {record.get('verdict') or 'unscored'}"
             + (f" · score {record['score']:.3f}" if record.get("score") is not None else "")]
    if manual:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(manual["when"]))
        lines.append(f"**Manual:** {manual['verdict']} by {manual['who']} at {when} (automatic: "
                     f"{auto.get('verdict') or '-'}: {auto.get('reason') or '-'})")
    else:
        lines.append(f"**Reason:** {auto.get('reason') or record.get('error') or 'not scored yet'}")
    if record.get("error"):
        lines.append(f"**Could not be scored:** {record['error']}")
    metrics = record.get("metrics") or {}
    if metrics:
        lines += ["", "| metric | value | goodness | rule |", "|---|---|---|---|"]
        for spec in METRICS:
            if spec.key not in metrics:
                continue
            value = metrics[spec.key]
            good = float(spec.goodness(np.array([value]))[0])
            limit = policy.limits.get(spec.key)
            rule = "" if limit is None else (
                f"{'≥' if spec.higher_is_better else '≤'} {fmt(spec.key, limit)} "
                + ("✓" if (value >= limit if spec.higher_is_better else value <= limit) else "✗"))
            lines.append(f"| {spec.title} | {fmt(spec.key, value)} | {good:.2f} | {rule} |")
    for key, reason in (record.get("unavailable") or {}).items():
        lines.append(f"- {SPECS[key].title}: {reason}" if key in SPECS else f"- {key}: {reason}")
    if record.get("near"):
        lines.append("\n**Near-duplicates:** " + ", ".join(f"`{k[:8]}` ({link_text(d)})"
                                                        for k, d in sorted(record["near"].items(),
                                                                           key=lambda kv: kv[1])[:6]))
    if history:
        lines += ["", "**History:**"]
        for h in history[-6:]:
            when = time.strftime("%m-%d %H:%M:%S", time.localtime(h.get("at", 0)))
            lines.append(f"- {when} · {h.get('verdict')} · {h.get('by')} · {h.get('reason') or ''}")
    lines.append(f"\n`{record['id']}` · {record.get('path', '')}")
    return "\n".join(lines)


def histogram(dist: dict, key: str, policy):
    """Matplotlib figure: the distribution of one metric (or the combined score) with its rule line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6), dpi=100)
    ax = fig.add_subplot(111)
    if key == "score":
        values, line, title = dist["score"].astype(float), policy.threshold, "Combined score"
    else:
        values, line, title = dist["values"][:, KEYS.index(key)], policy.limits.get(key), SPECS[key].title
    values = values[~np.isnan(values)]
    if len(values):
        ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="#7c6cd6", alpha=0.85)
    if line is not None:
        ax.axvline(line, color="#d64545", linewidth=2, label=f"{'threshold' if key == 'score' else 'rule'} {line:g}")
        if len(values):
            spec = SPECS.get(key)
            bad = (values < line) if (key == "score" or spec.higher_is_better) else (values > line)
            ax.set_title(f"{title}: {int(bad.sum())} of {len(values)} past the line", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.set_title(f"{title} ({len(values)} images)" if len(values) else f"{title}: nothing scored yet",
                     fontsize=10)
    fig.tight_layout()
    return fig


def create_tab(services) -> Tab:
    curation = services.curation
    data_dir = services.settings.data_dir
    policy = curation.policy()
    with gr.Tab("Curate", id="curate") as tab:
        with gr.Accordion("1 · Score images", open=True):
            with gr.Row():
                query = gr.Textbox(label="Gallery images whose prompt contains (all fields empty: every image)",
                                   scale=3)
                folder = gr.Textbox(label="…or a folder on this machine", scale=3,
                                    info="inside the data or models folder, or one given with --allow-dir")
                ids = gr.Textbox(label="…or image ids", scale=2, info="separated by commas or spaces")
            with gr.Row():
                only_new = gr.Checkbox(False, label="Only images not scored yet")
                auto = gr.Checkbox(curation.auto_curate, label="Auto-curate new images after each generation")
                run = gr.Button("Run curation", variant="primary", elem_id="curate-run", scale=0, min_width=160)
                stop = gr.Button("Stop", elem_id="curate-stop", scale=0, min_width=90)
            status = gr.Markdown(elem_id="curate-status")
            with gr.Accordion("Last run (JSON)", open=False):
                summary = gr.JSON(label="Summary")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    show = gr.Dropdown(FILTERS, value="all", label="Show", min_width=120)
                    sort = gr.Dropdown(SORTS, value="newest", label="Sort by", min_width=160)
                    order = gr.Radio(["descending", "ascending"], value="descending", label="Order", min_width=200)
                    page = gr.Number(1, label="Page", precision=0, minimum=1, min_width=80)
                count = gr.Markdown(elem_id="curate-count")
                grid = gr.Gallery(columns=5, height=520, format="png", interactive=False, allow_preview=False,
                                  elem_id="curate-grid", show_label=False)
                with gr.Row():
                    accept = gr.Button("Accept (A)", elem_id="curate-accept")
                    reject = gr.Button("Reject (R)", elem_id="curate-reject")
                    feature = gr.Button("Feature (F)", elem_id="curate-feature")
                    back = gr.Button("Back to automatic", elem_id="curate-auto")
            with gr.Column(scale=2):
                detail = gr.Markdown("Select an image to see its breakdown.", elem_id="curate-detail")
        with gr.Accordion("2 · Weights, rules and threshold", open=False):
            gr.Markdown("The combined score is the weighted geometric mean of each metric's goodness (0..1); an "
                        "image is rejected when a rule fails or the score is below the threshold. Changes show how "
                        "many verdicts would change; **Apply** makes them current. Manual verdicts never change.")
            with gr.Row():
                threshold = gr.Slider(0, 1, value=policy.threshold, step=0.01, label="Accept threshold",
                                      elem_id="curate-threshold")
            weight_sliders = {}
            for start in range(0, len(WEIGHTED), 4):
                with gr.Row():
                    for spec in WEIGHTED[start:start + 4]:
                        weight_sliders[spec.key] = gr.Slider(0, 10, value=policy.weights.get(spec.key, 0), step=0.1,
                                                             label=f"Weight: {spec.title}", info=spec.scale)
            rules = gr.Dataframe(
                value=[[spec.title, "" if policy.limits.get(spec.key) is None else policy.limits[spec.key],
                        ("min" if spec.higher_is_better else "max")] for spec in METRICS],
                headers=["metric", "limit (empty: no rule)", "kind"], datatype=["str", "str", "str"],
                interactive=True, static_columns=[0, 2], label="Rules", elem_id="curate-rules")
            preview = gr.Markdown(elem_id="curate-preview")
            with gr.Row():
                hist_key = gr.Dropdown([("Combined score", "score")] + [(m.title, m.key) for m in METRICS],
                                       value="score", label="Histogram of", scale=1)
                rule_counts = gr.Markdown()
            plot = gr.Plot(label="Distribution", elem_id="curate-hist")
            with gr.Row():
                apply = gr.Button("Apply", variant="primary", elem_id="curate-apply")
                suggest = gr.Button("Suggest thresholds (from your overrides)", elem_id="curate-suggest")
            suggestion = gr.Markdown()
        with gr.Accordion("3 · Use the accepted images", open=False):
            with gr.Row():
                send_train = gr.Button("Send accepted to Train", elem_id="curate-send-train")
                send_upscale = gr.Button("Send accepted to Upscale", elem_id="curate-send-upscale")
            sent = gr.Markdown()
        shown_ids = gr.State([])
        selected = gr.State(None)

    # ------------------------------------------------------------------ policy from the controls
    def policy_from(threshold_value, rule_rows, *weights):
        limits = {}
        rows = rule_rows.values.tolist() if hasattr(rule_rows, "values") else (rule_rows or [])
        titles = {m.title: m.key for m in METRICS}
        for row in rows:
            key = titles.get(str(row[0]))
            if key is not None:
                text = str(row[1] if row[1] is not None else "").strip()
                limits[key] = None if text in ("", "nan", "None") else text
        return curation.make_policy(dict(zip(weight_sliders, weights)), threshold_value, limits)

    policy_inputs = [threshold, rules, *weight_sliders.values()]

    # ------------------------------------------------------------------ review grid
    def load(show_value, sort_value, order_value, page_value):
        page_value = max(1, int(page_value or 1))
        found = curation.results(show_value, sort_value, order_value != "ascending", (page_value - 1) * PAGE, PAGE)
        items = [(_thumbnail(r, data_dir), _caption(r)) for r in found["items"]]
        pages = max(1, -(-found["total"] // PAGE))
        text = (f"{found['total']} image(s) · page {page_value} of {pages} · click an image, then A / R / F; "
                "← → move")
        return items, text, [r["id"] for r in found["items"]]

    review_inputs = [show, sort, order, page]
    review_outputs = [grid, count, shown_ids]
    # the grid fills when the tab opens (fresh each time), not on page load: an on-load event that outputs to a
    # gallery now and then never reports back in Gradio 6, leaving its loading overlay over the grid
    gr.on([tab.select, show.change, sort.change, order.change, page.submit], load, review_inputs, review_outputs,
          queue=False, **PLUMBING)

    def on_select(evt: gr.SelectData, id_list):
        if not id_list or evt.index >= len(id_list):
            return None, "Select an image to see its breakdown."
        image_id = id_list[evt.index]
        return image_id, breakdown(curation.record(image_id), curation.history(image_id), curation.policy())

    grid.select(on_select, shown_ids, [selected, detail], queue=False, **PLUMBING)

    def set_verdict(verdict: str):
        @user_errors
        def handler(image_id, show_value, sort_value, order_value, page_value, request: gr.Request):
            if not image_id:
                raise gr.Error("Select an image in the grid first.")
            curation.override(image_id, verdict, _who(request))
            items, text, id_list = load(show_value, sort_value, order_value, page_value)
            return (items, text, id_list,
                    breakdown(curation.record(image_id), curation.history(image_id), curation.policy()))
        return handler

    for button, verdict in ((accept, "accepted"), (reject, "rejected"), (feature, "featured"), (back, "auto")):
        button.click(set_verdict(verdict), [selected, *review_inputs], [*review_outputs, detail], queue=False,
                     **PLUMBING)

    # ------------------------------------------------------------------ scoring
    form = Form(query=query, folder=folder, ids=ids, only_new=only_new)

    @form.handler
    def on_curate(values: dict, request: gr.Request, progress=gr.Progress()):
        """Score images: a gallery search, a folder, image ids, or (all empty) the whole gallery."""
        id_list = [i for i in re.split(r"[,\s]+", values.get("ids") or "") if i]
        query_text, folder_text = (values.get("query") or "").strip(), (values.get("folder") or "").strip()
        req = CurationRequest(ids=id_list, query=query_text, folder=folder_text,
                              all=not (id_list or query_text or folder_text), only_new=bool(values.get("only_new")))

        def render(update):
            progress((update.done, max(1, update.total)), desc=update.message, unit="images")
            return update.message, gr.update()

        report = yield from stream_job(services.jobs, session_owner(request),
                                       services.queue.interactive("curate", req, session_owner(request)), render)
        yield report.message, report.summary()

    run.click(on_curate, form.inputs, [status, summary], api_name="curate", **CURATE_QUEUE).then(
        load, review_inputs, review_outputs, queue=False, **PLUMBING)

    def on_stop(request: gr.Request):
        return stop_jobs(services.jobs, request)

    stop.click(on_stop, None, status, queue=False, **PLUMBING)
    auto.change(lambda on: curation.set_auto_curate(on), auto, None, queue=False, **PLUMBING)

    # ------------------------------------------------------------------ weights, preview, histogram
    def rule_text(rules_done: dict) -> str:
        if not rules_done:
            return "No rule rejects anything."
        return "**Rejected by rule:** " + ", ".join(f"{k} {v}" for k, v in sorted(rules_done.items()))

    @user_errors
    def on_preview(key, *policy_values):
        candidate = policy_from(*policy_values)
        result = curation.preview(candidate)
        return result.message, rule_text(result.rules), histogram(curation.distributions(), key, candidate)

    preview_outputs = [preview, rule_counts, plot]
    gr.on([threshold.release, rules.input, hist_key.change, *[s.release for s in weight_sliders.values()]],
          on_preview, [hist_key, *policy_inputs], preview_outputs, trigger_mode="always_last", **PLUMBING)

    apply_form = Form(threshold=threshold, rules=rules, **{f"weight_{k}": s for k, s in weight_sliders.items()})

    @apply_form.handler
    def on_apply(values: dict):
        """Make these weights, rules and threshold current and re-judge every scored image (manual verdicts
        stay)."""
        candidate = policy_from(values["threshold"], values["rules"],
                                *[values[f"weight_{k}"] for k in weight_sliders])
        changed = curation.apply(candidate)
        return f"Applied: {changed} automatic verdict(s) changed."

    apply.click(on_apply, apply_form.inputs, preview, api_name="curation_apply", **CURATE_QUEUE).then(
        load, review_inputs, review_outputs, queue=False, **PLUMBING).then(
        on_preview, [hist_key, *policy_inputs], preview_outputs, **PLUMBING)

    @user_errors
    def on_suggest():
        found = curation.suggest_thresholds()
        text = (f"**Suggested:** {found.message}. The sliders now show it: press **Apply** to use it, or move "
                "them back.")
        return [text, gr.update(value=found.policy.threshold)] + [
            gr.update(value=found.policy.weights.get(k, 0)) for k in weight_sliders]

    suggest.click(on_suggest, None, [suggestion, threshold, *weight_sliders.values()], **PLUMBING).then(
        on_preview, [hist_key, *policy_inputs], preview_outputs, **PLUMBING)

    def initial_preview():
        current = curation.policy()
        result = curation.preview(current)
        return "", rule_text(result.rules), histogram(curation.distributions(), "score", current)

    # ------------------------------------------------------------------ API-only endpoints
    def override(image_id: str, verdict: str, request: gr.Request) -> dict:
        """Set a person's verdict on an image: accepted, rejected or featured (auto: back to the automatic one).
        Returns the image's curation record."""
        record = user_errors(curation.override)(image_id, verdict, _who(request))
        return {k: record.get(k) for k in ("id", "verdict", "manual", "auto", "score")}

    def curation_results(verdict: str = "all", sort: str = "newest", descending: bool = True, offset: int = 0,
                         limit: int = 48) -> dict:
        """A page of curated images filtered by verdict (all, accepted, featured, rejected, duplicate, error,
        manual) and sorted by newest, score or any metric: {"total", "items": [{id, image_path, verdict, score,
        reason, metrics, manual}]}."""
        found = user_errors(curation.results)(verdict, sort, descending, offset, limit)
        items = [{"id": r["id"], "image_path": r["path"], "verdict": r.get("verdict"), "score": r.get("score"),
                  "reason": (r.get("auto") or {}).get("reason"), "metrics": r.get("metrics", {}),
                  "unavailable": r.get("unavailable", {}), "manual": r.get("manual"), "error": r.get("error")}
                 for r in found["items"]]
        return {"total": found["total"], "items": items}

    def suggest_thresholds() -> dict:
        """Weights and threshold fitted to the manual verdicts (needs 20 or more), with the agreement before and
        after (cross-validated). Nothing is applied: send them to /curation_apply to use them."""
        found = user_errors(curation.suggest_thresholds)()
        return {"message": found.message, "before": found.before, "after": found.after, "samples": found.samples,
                "threshold": found.policy.threshold, "weights": found.policy.weights}

    # ------------------------------------------------------------------ to the Train tab
    def connect(tabs: dict, tab_row) -> None:
        train = tabs.get("Train")
        target = train.components.get("dataset_folder") if train is not None else None

        @user_errors
        def send():
            path, n = curation.export_accepted()
            rel = path.relative_to(data_dir) if path.is_relative_to(data_dir) else path
            text = (f"Copied **{n}** accepted image(s) with their prompts as captions to `{rel}`"
                    + (" and put it in the Train tab's folder box: press **Add folder** there."
                       if target is not None else "."))
            if target is None:
                return text
            return text, str(rel), gr.Tabs(selected="train")

        outputs = [sent] if target is None else [sent, target, tab_row]
        send_train.click(send, None, outputs, queue=False, **PLUMBING)

        upscale = tabs.get("Upscale")
        upscale_ids = upscale.components.get("ids") if upscale is not None else None
        if upscale_ids is None:
            send_upscale.visible = False
            return

        @user_errors
        def send_to_upscale():
            ids, outside = curation.accepted_gallery_ids()
            if not ids:
                raise StudioError(f"none of the {outside} accepted image(s) is in the gallery (they were scored "
                                  "in a folder): give the Upscale tab that folder instead", "verdict")
            text = f"Sent **{min(len(ids), SEND_AT_MOST)}** accepted image(s), best first, to the Upscale tab."
            if len(ids) > SEND_AT_MOST:
                text += f" The other {len(ids) - SEND_AT_MOST:,} (lower scores) were not sent."
            if outside:
                text += f" {outside} accepted image(s) scored in a folder outside the gallery were left out."
            return text, ",".join(ids[:SEND_AT_MOST]), gr.Tabs(selected="upscale")

        send_upscale.click(send_to_upscale, None, [sent, upscale_ids, tab_row], queue=False, **PLUMBING)

    return Tab("Curate",
               on_load=[LoadEvent(initial_preview, [], preview_outputs)],
               api={"override": override, "curation_results": curation_results,
                    "suggest_thresholds": suggest_thresholds},
               components={"ids": ids}, connect=connect)

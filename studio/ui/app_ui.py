"""Assemble the Blocks app from the tab modules."""

from __future__ import annotations

import gradio as gr

from studio.ui import gallery_tab, generate_tab, models_tab, train_tab


def build_ui(services) -> gr.Blocks:
    with gr.Blocks(title="AI Artist Studio") as demo:
        gr.Markdown("# AI Artist Studio", elem_classes=["studio-title"])
        with gr.Tabs():
            generate_tab.create_tab(services)
            runs_view, runs_outputs = train_tab.create_tab(services)
            gallery_load, gallery_inputs, gallery_outputs = gallery_tab.create_tab(services)
            models_refresh, models_outputs = models_tab.create_tab(services)
        demo.load(gallery_load, gallery_inputs, gallery_outputs, queue=False)
        demo.load(models_refresh, None, models_outputs, queue=False)
        demo.load(runs_view, None, runs_outputs, queue=False)
    return demo

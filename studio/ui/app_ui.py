"""Assemble the Blocks app from the tab modules: each builds itself and hands back a Tab (studio.ui.common);
this module only lays them out, wires their on-load events and adds the page's shell (theme toggle, help)."""

from __future__ import annotations

import gradio as gr

from studio.ui import controlnet_tab, curate_tab, gallery_tab, generate_tab, models_tab, shell, train_tab
from studio.ui import prompts_tab, queue_tab, schedule_tab, upscale_tab
from studio.ui.common import PLUMBING

# in the page's order
TAB_MODULES = (generate_tab, controlnet_tab, train_tab, curate_tab, schedule_tab, queue_tab, upscale_tab,
               gallery_tab, prompts_tab, models_tab)


def build_ui(services) -> gr.Blocks:
    with gr.Blocks(title="AI Artist Studio") as demo:
        shell.header()
        with gr.Tabs() as tab_row:
            tabs = [module.create_tab(services) for module in TAB_MODULES]
        for tab in tabs:  # events between tabs, once every tab exists
            if tab.connect is not None:
                tab.connect({t.title: t for t in tabs}, tab_row)
        shell.help_panel()
        shell.install_script(demo)
        for tab in tabs:
            for event in tab.on_load:
                demo.load(event.fn, event.inputs, event.outputs, queue=False, **PLUMBING)
            for name, fn in tab.api.items():
                gr.api(fn, api_name=name, queue=False)
    return demo

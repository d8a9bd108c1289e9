"""Gradio UI: one module per tab, each with create_tab(services)."""

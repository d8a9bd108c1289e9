"""The page around the tabs: the title bar with a remembered dark-mode toggle, the keyboard shortcuts and their
help panel. The script runs once the page has loaded (an on-load event with JavaScript only)."""

from __future__ import annotations

import gradio as gr

SHORTCUTS = (
    ("Ctrl+Enter", "Generate (on the Generate tab)"),
    ("Alt+X", "Stop the running generation"),
    ("Alt+1 … Alt+9", "Open the first … ninth tab"),
    ("Alt+D", "Dark / light mode (remembered in this browser)"),
    ("A / R / F", "Accept / reject / feature the selected image (Curate tab, when not typing)"),
    ("← / →", "Previous / next image in the review grid (Curate tab) or the open image (Gallery)"),
    ("Esc", "Close the open image (Gallery)"),
    ("Shift+click", "Select a range of images (Gallery, in Select mode)"),
    ("?", "Show or hide this help (when not typing)"),
)

SCRIPT = """
() => {
  const KEY = "studio-theme";
  const apply = (mode) => document.body.classList.toggle("dark", mode === "dark");
  const saved = localStorage.getItem(KEY);
  if (saved) apply(saved);
  window.studioToggleTheme = () => {
    const mode = document.body.classList.contains("dark") ? "light" : "dark";
    apply(mode);
    localStorage.setItem(KEY, mode);
  };
  const visible = (el) => el && el.offsetParent !== null;
  const typing = (el) => el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.isContentEditable);
  // the Gallery's select event reads whether shift was held (gallery_tab.SHIFT_JS)
  document.addEventListener("mousedown", (e) => { window.studioShiftClick = e.shiftKey; }, true);
  // an image panel that shows an image takes the arrow keys and Esc
  const lightbox = () => [...document.querySelectorAll(".studio-lightbox")]
    .find((b) => visible(b) && b.querySelector("img"));
  document.addEventListener("keydown", (e) => {
    const box = !e.ctrlKey && !e.metaKey && !e.altKey && !typing(document.activeElement) && lightbox();
    if (box) {
      const target = {ArrowLeft: ".lightbox-prev", ArrowRight: ".lightbox-next", Escape: ".lightbox-close"}[e.key];
      const button = target && box.querySelector(target);
      if (button) { e.preventDefault(); button.click(); return; }
    }
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      const button = document.querySelector("#generate-button");
      if (visible(button)) { e.preventDefault(); button.click(); }
    } else if (e.altKey && (e.key === "x" || e.key === "X")) {
      const button = document.querySelector("#stop-button");
      if (button) { e.preventDefault(); button.click(); }
    } else if (e.altKey && /^[1-9]$/.test(e.key)) {
      const tabs = document.querySelectorAll("button[role=tab]");
      const tab = tabs[Number(e.key) - 1];
      if (tab) { e.preventDefault(); tab.click(); }
    } else if (e.altKey && (e.key === "d" || e.key === "D")) {
      e.preventDefault();
      window.studioToggleTheme();
    } else if (e.key === "?" && !typing(document.activeElement)) {
      const toggle = document.querySelector("#help-panel button, #help-panel .label-wrap");
      if (toggle) { e.preventDefault(); toggle.click(); }
    } else if (!e.ctrlKey && !e.metaKey && !e.altKey && !typing(document.activeElement)
               && visible(document.querySelector("#curate-grid"))) {
      const verdict = {a: "#curate-accept", r: "#curate-reject", f: "#curate-feature"}[e.key.toLowerCase()];
      const step = {ArrowRight: 1, ArrowLeft: -1}[e.key];
      if (verdict) { e.preventDefault(); document.querySelector(verdict).click(); }
      if (step) {
        const thumbs = [...document.querySelectorAll("#curate-grid button.thumbnail-item")];
        const at = thumbs.findIndex((t) => t.classList.contains("selected"));
        const next = thumbs[Math.min(thumbs.length - 1, Math.max(0, at < 0 ? 0 : at + step))];
        if (next) { e.preventDefault(); next.click(); next.focus(); }
      }
    }
  });
}
"""


def header() -> None:
    """The title bar: the studio's name and the dark-mode toggle."""
    with gr.Row(elem_id="studio-header", equal_height=True):
        gr.Markdown("# AI Artist Studio", elem_classes=["studio-title"])
        theme = gr.Button("◐ Dark / light", elem_id="theme-toggle", scale=0, min_width=140, size="sm")
    theme.click(None, js="() => window.studioToggleTheme()")


def install_script(demo: gr.Blocks) -> None:
    """Run SCRIPT in the browser when the page has loaded (after Gradio set its own theme)."""
    demo.load(None, js=SCRIPT)


def help_panel() -> None:
    """A closed panel listing the keyboard shortcuts."""
    with gr.Accordion("Keyboard shortcuts and help", open=False, elem_id="help-panel"):
        rows = "\n".join(f"| `{keys}` | {action} |" for keys, action in SHORTCUTS)
        gr.Markdown(f"| Keys | Action |\n|---|---|\n{rows}\n\nEvery action is also an API endpoint: see "
                    "*Use via API* at the foot of the page.")

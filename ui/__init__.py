"""clipsearch's Gradio web UI (installed as the package `clipsearch_ui`)."""

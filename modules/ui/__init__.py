"""The Gradio face: one file per tab; named form values become requests; no business logic."""

"""The workflow's steps, one module each, run by the thin CLIs in scripts/ (each step imports only the library)."""

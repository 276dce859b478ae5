"""The Textual monitor for a running llm-sidecar (talks to it only over the control socket)."""

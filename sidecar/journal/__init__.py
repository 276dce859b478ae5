"""The request journal: one SQLite row per finished request, kept off the data path.

Owns: where the file is (paths.py); its tables and how an event becomes a row (schema.py); opening it, moving
a corrupt file aside, writing batches, pruning by age and size (store.py); the bounded queue and the writer
thread, with one warning per episode of trouble (writer.py); request and response bodies, redacted and
compressed (bodies.py); what the CLI and the control API read back (reader.py); and the `log` and `replay`
commands (cli.py, render.py). Imports config, formats and observe; never nodes, the proxy or the control plane.
"""

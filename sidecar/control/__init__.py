"""The control plane: the control socket's API, its client, and what `status` prints.

Owns: binding the socket safely (socket.py), the API server (server.py), the status JSON (status.py),
the client the CLI and the monitor use (client.py) and the status table (table.py). Sees the running
sidecar only through `nodes.runtime.Runtime`; never imports the proxy.
"""

"""The data path: one client request from the listener to a node's answer and back.

Owns: the raw ASGI app (app.py), what it checks of a request (inbound.py), the answers it gives itself
(refusals.py), the per-request policy loop (forward.py) and what its attempts share (trip.py), what a node's answer means
(answer.py), relaying it (relay.py), continuing a broken stream (continuation.py), the retry policy
(retry.py), the request's record and body rewrite (exchange.py), a client that leaves (interrupt.py)
and the sidecar's own `GET /v1/models` (models.py). Imports nodes, config, formats, observe, the
listener's scope extension name and metrics; never the control plane.
"""

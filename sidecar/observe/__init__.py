"""What the sidecar says about itself: the event hub, traffic figures and the control API's shapes.

Owns: the event hub every layer publishes to (events.py), per-node traffic windows (stats.py), the JSON
shapes of the control API (shapes.py, defined once), and how ages and durations read (display.py).
Imports nothing of the sidecar, so the data path, the control plane and the monitor can all use it.
"""

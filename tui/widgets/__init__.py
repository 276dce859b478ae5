"""The monitor's widgets, one concern a module. Each is handed data by the app; none talks to the sidecar.

`text` draws values as inert text, `table` fits a table's columns to its width; `header`, `nodes`,
`traffic`, `plot` and `health_log` are the panes, `notice` what is shown while no sidecar answers. Their styles live in `tui/monitor.tcss`.
"""

from .header import HeaderBar
from .health_log import HealthLog, event_line
from .nodes import NodesTable, error_share, node_cells, state_text
from .notice import Disconnected
from .plot import PlotRow, RatePlot
from .table import Col, FittedTable, fit
from .text import clean, cut, plain
from .traffic import TrafficTable, short_reason, traffic_cells, why

__all__ = [
    "Col", "Disconnected", "FittedTable", "HeaderBar", "HealthLog", "NodesTable", "PlotRow", "RatePlot", "TrafficTable",
    "clean", "cut", "error_share", "event_line", "fit", "node_cells", "plain", "short_reason", "state_text",
    "traffic_cells", "why",
]  # fmt: skip

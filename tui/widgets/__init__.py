"""The monitor's widgets, one concern a module. Each is handed data by the app; none talks to the sidecar.

`text` draws values as inert text, `table` fits a table's columns to its width; `header` (with `spend`),
`nodes`, `traffic`, `plot` and `health_log` are the panes, `notice` what is shown while no sidecar answers,
`detail` one request's detail (Enter on a traffic row). Their styles live in `tui/monitor.tcss`.
"""

from .detail import RequestScreen, detail_text
from .header import HeaderBar
from .health_log import HealthLog, event_line
from .nodes import NodesTable, error_share, node_cells, state_text
from .notice import Disconnected
from .plot import PlotRow, RatePlot
from .spend import spend_text
from .table import Col, FittedTable, fit
from .text import clean, cut, plain
from .traffic import TrafficTable, short_reason, traffic_cells, why

__all__ = [
    "Col", "Disconnected", "FittedTable", "HeaderBar", "HealthLog", "NodesTable", "PlotRow", "RatePlot",
    "RequestScreen", "TrafficTable", "clean", "cut", "detail_text", "error_share", "event_line", "fit", "node_cells",
    "plain", "short_reason", "spend_text", "state_text", "traffic_cells", "why",
]  # fmt: skip

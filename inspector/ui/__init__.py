"""The desktop application (PySide6 + pyqtgraph): shows and commands; the core does the work."""

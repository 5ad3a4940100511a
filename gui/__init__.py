"""PyQt6 window for live facial expression analysis (``leaf-fer gui``)."""

"""leaf-fer: real-time video facial expression analysis with the LEAF model."""

__version__ = "0.1.0"

"""The semi-supervised study behind leaf-fer's model (docs/research/semi_supervised.md): its harness, configs and
report scripts. Not part of the installed package; run its modules from the repository root with ``python -m``."""

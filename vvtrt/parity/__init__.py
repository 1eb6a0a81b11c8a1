"""Parity: exported components and the runtime against the PyTorch reference."""

"""kpc_trio: the Kaa Protocol Communication service (KPC) re-implemented on trio."""

__version__ = "0.1.0"

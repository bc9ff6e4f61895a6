"""hookline: queue-backed asynchronous webhook ingestion."""

__version__ = "0.1.0"

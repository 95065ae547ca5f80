"""footprint: where a booted Linux system's memory went, per subsystem and storage layer."""

__version__ = "0.1.0"

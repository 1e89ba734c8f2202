"""gridedge: the grid-edge gateway agent."""
__version__ = "0.1.0"

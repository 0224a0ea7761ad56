"""tlbench-extras: an example third-party tlbench plugin (datasets and a strategy).

tlbench finds the modules through the ``tlbench`` entry-point group (see pyproject.toml);
nothing here is imported by tlbench itself.
"""

__version__ = "0.1.0"

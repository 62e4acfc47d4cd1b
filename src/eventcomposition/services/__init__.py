"""A node's extra services: entered once its runtime runs, exited before it stops."""

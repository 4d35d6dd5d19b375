"""Repository tools that run from a source checkout (``python -m tools.<name>``); they
import nothing of the project."""

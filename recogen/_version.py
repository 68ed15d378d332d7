"""The package version, in a module of its own so that any module can read it without importing
``recogen/__init__.py`` (which imports the tasks)."""
__version__ = "0.1.0"

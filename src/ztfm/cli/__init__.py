"""Command-line interface: the only code that prints or calls sys.exit."""

"""The HTTP edge: Flask blueprints."""

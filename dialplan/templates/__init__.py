"""Jinja templates for the Asterisk configuration (a package so package_data ships them)."""

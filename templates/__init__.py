"""The Jinja2 templates of the updater-script and the HTML report, shipped as package data."""

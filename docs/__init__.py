"""The documentation site's pages (Markdown, built by mkdocs) and the generator of its reference pages."""

"""The five stages, each a modular pipeline with thin nodes over the library."""

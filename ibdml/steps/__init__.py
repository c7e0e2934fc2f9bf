"""The steps: one module per pipeline step, each reading and writing one run folder
(docs/architecture.md). They are the only code that does file I/O on runs."""

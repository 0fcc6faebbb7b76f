"""Speed benchmarks for awdlstm: ``python -m benchmarks.run`` (see benchmarks/README.md)."""

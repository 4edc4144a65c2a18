"""flowtrail.engine."""

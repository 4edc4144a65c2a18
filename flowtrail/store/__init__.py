"""flowtrail.store."""

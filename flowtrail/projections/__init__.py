"""flowtrail.projections."""

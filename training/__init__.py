"""metahmr training package."""

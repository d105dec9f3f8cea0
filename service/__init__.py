"""metahmr service package."""

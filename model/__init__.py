"""metahmr model package."""

"""metahmr worker package."""

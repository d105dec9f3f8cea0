"""Benchmarks behind `metahmr bench ...`; they may import every package, nothing imports them."""

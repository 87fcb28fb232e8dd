"""The pure core: no I/O, no logging, no clocks, no randomness. Everything here is data in, data out."""

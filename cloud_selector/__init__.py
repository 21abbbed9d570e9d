"""edgeflywheel cloud service."""

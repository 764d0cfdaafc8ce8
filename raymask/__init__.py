"""raymask: mask sensitive data in machine-to-machine streams, on Ray."""

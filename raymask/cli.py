"""Console entry point (`raymask`); the commands live in raymask.cluster.cli."""

from raymask.cluster.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()

"""Import paths of the original package's built-in backends."""

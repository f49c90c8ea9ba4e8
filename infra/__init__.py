"""The Pulumi program: typed configuration, wiring of components, and the mock engine."""

"""The demo: embedded default, demo clinic data, the example workflows, two simulated weeks."""
